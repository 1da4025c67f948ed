"""Image readers by image id: image files, or JPEG bytes in HDF5 (one handle per process), with clear errors."""

from __future__ import annotations

import io
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

MAGIC = {b"\xff\xd8": "jpeg", b"\x89P": "png", b"BM": "bmp"}


class BadImageError(ValueError):
    """An image that is missing, empty, truncated or undecodable; names the id and the file it came from."""

    def __init__(self, image_id: str, source: str, reason: str):
        super().__init__(f"image {image_id} in {source}: {reason}")
        self.image_id, self.source, self.reason = image_id, source, reason


class BadImagesError(ValueError):
    """Every bad image found up front, in one error: the first 20 ids, the count, and their files."""


def decode(data: bytes | np.ndarray, image_id: str, source: str, max_pixels: int | None = None) -> np.ndarray:
    """Encoded bytes -> RGB uint8 HxWx3 (EXIF orientation applied), or BadImageError.

    max_pixels: refuse images whose header declares more pixels than this before decoding them (decompression bombs).
    """
    buffer = np.frombuffer(data, np.uint8) if isinstance(data, bytes) else data
    reason = check_bytes(bytes(buffer[:2]), bytes(buffer[-2:]), buffer.size)
    if reason:
        raise BadImageError(image_id, source, reason)
    if max_pixels is not None:
        width, height = declared_size(buffer, image_id, source)
        if width * height > max_pixels:
            raise BadImageError(
                image_id,
                source,
                f"{width}x{height} = {width * height:,} pixels is over the limit of {max_pixels:,} "
                "(a decompression bomb, or a photo to downscale first; the limit is max_pixels)",
            )
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    if image is None:
        raise BadImageError(image_id, source, "undecodable")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def declared_size(buffer: np.ndarray, image_id: str = "", source: str = "") -> tuple[int, int]:
    """(width, height) from an image header, without decoding the pixels; (0, 0) when the header is unreadable
    (decoding then reports it)."""
    from PIL import Image  # only headers are read: Image.open is lazy

    try:
        with Image.open(io.BytesIO(buffer.tobytes())) as image:
            return image.size
    except Image.DecompressionBombError as err:  # PIL's own ceiling, far above any sensible max_pixels
        raise BadImageError(image_id, source, f"decompression bomb: {err}") from err
    except (OSError, ValueError):
        return 0, 0


def check_bytes(head: bytes, tail: bytes, size: int) -> str | None:
    """A cheap check on an encoded image's first and last bytes; the reason it is bad, or None."""
    if size == 0:
        return "empty"
    kind = MAGIC.get(head[:2])
    if kind is None:
        return "not a JPEG, PNG or BMP image"
    if kind == "jpeg" and tail[-2:] != b"\xff\xd9":
        return "truncated JPEG (no end-of-image marker)"
    return None


class FileReader:
    """Reads `paths[image_id]`; picklable, so it works in DataLoader workers."""

    def __init__(self, paths: dict[str, str]):
        self.paths = paths

    def __call__(self, image_id: str) -> np.ndarray:
        path = self.paths[image_id]
        try:
            data = np.fromfile(path, np.uint8)
        except OSError as err:
            raise BadImageError(image_id, path, f"cannot be read ({err.strerror})") from err
        return decode(data, image_id, path)

    def problems(self, image_ids) -> list[tuple[str, str, str]]:
        """(image_id, file, reason) for every image that is missing, empty or not a complete image file."""
        found = []
        for image_id in image_ids:
            path = self.paths.get(image_id)
            if path is None or not os.path.isfile(path):
                found.append((image_id, path or "?", "missing"))
                continue
            size = os.path.getsize(path)
            with open(path, "rb") as handle:
                head = handle.read(2)
                handle.seek(max(0, size - 2))
                reason = check_bytes(head, handle.read(2), size)
            if reason:
                found.append((image_id, path, reason))
        return found


class Hdf5Reader:
    """JPEG bytes keyed by id in one HDF5 file. Each process opens its own handle, on first use, so forked
    DataLoader workers never share one, and images stream from disk instead of being loaded up front."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        self._handle = None
        self._pid = None

    def __getstate__(self) -> dict:
        return {"path": self.path, "_handle": None, "_pid": None}

    def _file(self):
        if self._handle is None or self._pid != os.getpid():
            import h5py

            self._handle, self._pid = h5py.File(self.path, "r"), os.getpid()
        return self._handle

    def __call__(self, image_id: str) -> np.ndarray:
        try:
            data = self._file()[image_id][()]
        except KeyError as err:
            raise BadImageError(image_id, self.path, "missing") from err
        except OSError as err:
            raise BadImageError(image_id, self.path, f"unreadable HDF5 entry ({err})") from err
        return decode(np.asarray(data).tobytes() if not isinstance(data, bytes) else data, image_id, self.path)

    def problems(self, image_ids) -> list[tuple[str, str, str]]:
        """Missing, empty and non-image or truncated entries (first and last two bytes), without decoding: for a
        fixed-size entry stored contiguously those four bytes are read from the file at the entry's offset."""
        import h5py

        handle, found = self._file(), []
        keys = set(handle.keys())
        with open(self.path, "rb") as raw:
            for image_id in image_ids:
                if image_id not in keys:
                    found.append((image_id, self.path, "missing"))
                    continue
                entry = handle[image_id]
                size, offset = entry.id.get_storage_size(), entry.id.get_offset()
                if entry.shape is None or size == 0:  # an HDF5 empty dataset, or one never written
                    found.append((image_id, self.path, "empty"))
                    continue
                fixed = entry.dtype.kind in "SV" and h5py.check_vlen_dtype(entry.dtype) is None
                if fixed and entry.shape == () and offset is not None:
                    head, tail = os.pread(raw.fileno(), 2, offset), os.pread(raw.fileno(), 2, offset + max(size - 2, 0))
                else:  # variable-length or chunked: read the entry itself
                    data = entry[()]
                    data = data if isinstance(data, bytes) else np.asarray(data).tobytes()
                    size, head, tail = len(data), data[:2], data[-2:]
                reason = check_bytes(head, tail, size)
                if reason:
                    found.append((image_id, self.path, reason))
        return found


def image_paths(folder: Path, extensions: tuple[str, ...] = (".jpg", ".jpeg", ".png")) -> dict[str, str]:
    """{stem: path} for the images directly in `folder`."""
    if not folder.is_dir():
        return {}
    return {p.stem: str(p) for p in folder.iterdir() if p.suffix.lower() in extensions}


def read_table(path: Path, required: list[str], what: str = "CSV") -> pd.DataFrame:
    """A CSV with its required columns checked: a missing file or column is an error naming both."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}; check data.root")
    table = pd.read_csv(path, low_memory=False)
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ValueError(f"{path} lacks the required column(s) {missing}; it has {list(table.columns)[:20]}")
    return table
