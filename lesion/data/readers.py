"""Image readers by image id: image files, or JPEG bytes in HDF5 (one handle per process), with clear errors."""

from __future__ import annotations

import io
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from pillow_heif import register_heif_opener

# Pillow reads HEIC/HEIF (the iPhone's default) once pillow-heif registers its opener: at import, so that the first
# HEIC a process sees has its declared size checked against max_pixels like every other image.
register_heif_opener()

MAGIC = {b"\xff\xd8": "jpeg", b"\x89P": "png", b"BM": "bmp"}
HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif")
# File names the folder layouts and predict.py take: what `image_kind` recognises.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".heic", ".heif", ".avif")
HEAD = 12  # bytes that identify every accepted format


def image_kind(head: bytes) -> str | None:
    """jpeg, png, bmp, webp or heif from a file's first 12 bytes; None for anything else."""
    if head[:2] in MAGIC:
        return MAGIC[head[:2]]
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS:
        return "heif"
    return None


def jpeg_end(data: bytes) -> int | None:
    """Where a JPEG's image ends (just past its end-of-image marker), walking its segments and entropy-coded data;
    None when the data stops first (a truncated file). Bytes after that point (the video of a "motion photo",
    padding) are not part of the image. An EXIF thumbnail's own end marker is skipped with its segment."""
    i, n = 2, len(data)
    while i + 1 < n:
        if data[i] != 0xFF:
            return None  # not at a marker: corrupt
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xD9:
            return i + 2
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        if i + 4 > n:
            return None
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
        if marker != 0xDA:  # not start-of-scan: the segment is all there is
            continue
        while True:  # entropy-coded data runs to the next marker that is not a stuffed FF00 or a restart
            j = data.find(b"\xff", i)
            if j < 0 or j + 1 >= n:
                return None
            following = data[j + 1]
            if following == 0x00 or 0xD0 <= following <= 0xD7:
                i = j + 2
            elif following == 0xFF:
                i = j + 1
            else:
                i = j
                break
    return None


class BadImageError(ValueError):
    """An image that is missing, empty, truncated or undecodable; names the id and the file it came from."""

    def __init__(self, image_id: str, source: str, reason: str):
        super().__init__(f"image {image_id} in {source}: {reason}")
        self.image_id, self.source, self.reason = image_id, source, reason


class BadImagesError(ValueError):
    """Every bad image found up front, in one error: the first 20 ids, the count, and their files."""


def decode(data: bytes | np.ndarray, image_id: str, source: str, max_pixels: int | None = None) -> np.ndarray:
    """Encoded bytes (JPEG, PNG, BMP, WebP, HEIC/HEIF) -> RGB uint8 HxWx3, EXIF orientation applied, or
    BadImageError. Grey, 16-bit, CMYK and alpha images come out as 8-bit RGB. A JPEG is read up to its end-of-image
    marker (phones append videos to "motion photos"); one that stops before it is truncated.

    max_pixels: refuse images whose header declares more pixels than this before decoding them (decompression bombs).
    """
    buffer = np.frombuffer(data, np.uint8) if isinstance(data, bytes) else data
    reason = check_bytes(bytes(buffer[:HEAD]), bytes(buffer[-2:]), buffer.size)
    if reason:
        raise BadImageError(image_id, source, reason)
    kind = image_kind(bytes(buffer[:HEAD]))
    if kind == "jpeg" and bytes(buffer[-2:]) != b"\xff\xd9":
        end = jpeg_end(buffer.tobytes())
        if end is None:
            raise BadImageError(image_id, source, TRUNCATED_JPEG)
        buffer = buffer[:end]
    if max_pixels is not None:
        width, height = declared_size(buffer, image_id, source)
        if width * height > max_pixels:
            raise BadImageError(
                image_id,
                source,
                f"{width}x{height} = {width * height:,} pixels is over the limit of {max_pixels:,} "
                "(a decompression bomb, or a photo to downscale first; the limit is max_pixels)",
            )
    if kind in ("heif", "webp"):
        return _decode_pil(buffer, image_id, source)
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    if image is None:
        raise BadImageError(image_id, source, "undecodable")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _decode_pil(buffer: np.ndarray, image_id: str, source: str) -> np.ndarray:
    """HEIC/HEIF (pillow-heif) and WebP through Pillow, with EXIF orientation applied, as RGB uint8."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(buffer.tobytes())) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey: keep the top 8 bits, as OpenCV does
                image = Image.fromarray((np.asarray(image, np.uint32) >> 8).astype(np.uint8))
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as err:
        raise BadImageError(image_id, source, f"undecodable ({err})") from err


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


TRUNCATED_JPEG = "truncated JPEG (the data stops before its end-of-image marker)"


def check_bytes(head: bytes, tail: bytes, size: int, read_all=None) -> str | None:
    """A cheap check on an encoded image's first and last bytes; the reason it is bad, or None. A JPEG that does not
    end with its end-of-image marker is read whole (`read_all()`) and walked: trailing data is fine, a cut is not."""
    if size == 0:
        return "empty"
    kind = image_kind(head)
    if kind is None:
        return "not a JPEG, PNG, BMP, WebP or HEIC/HEIF image"
    if kind == "jpeg" and tail[-2:] != b"\xff\xd9" and read_all is not None and jpeg_end(read_all()) is None:
        return TRUNCATED_JPEG
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
                head = handle.read(HEAD)
                handle.seek(max(0, size - 2))
                reason = check_bytes(head, handle.read(2), size, read_all=lambda p=path: Path(p).read_bytes())
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
            data = _entry_bytes(self._file()[image_id])
        except KeyError as err:
            raise BadImageError(image_id, self.path, "missing") from err
        except OSError as err:
            raise BadImageError(image_id, self.path, f"unreadable HDF5 entry ({err})") from err
        return decode(data, image_id, self.path)

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
                    head = os.pread(raw.fileno(), HEAD, offset)[: min(HEAD, size)]
                    tail = os.pread(raw.fileno(), 2, offset + max(size - 2, 0))
                else:  # variable-length or chunked: read the entry itself
                    data = _entry_bytes(entry)
                    size, head, tail = len(data), data[:HEAD], data[-2:]
                reason = check_bytes(head, tail, size, read_all=lambda e=entry: _entry_bytes(e))
                if reason:
                    found.append((image_id, self.path, reason))
        return found


def _entry_bytes(entry) -> bytes:
    data = entry[()]
    return data if isinstance(data, bytes) else np.asarray(data).tobytes()


def image_paths(folder: Path, extensions: tuple[str, ...] = IMAGE_SUFFIXES) -> dict[str, str]:
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
