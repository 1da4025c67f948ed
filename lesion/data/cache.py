"""An on-disk cache of preprocessed (decoded, resized, CLAHE'd) uint8 images, keyed by the settings that shape them."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

DEFAULT_DIR = Path(os.environ.get("LESION_CACHE", Path.home() / ".cache" / "lesion"))


class ImageCache:
    """One memory-mapped array of N x H x W x 3 images plus a filled flag per row.

    Rows are filled on first read, from any DataLoader worker (each row is written by one process at a time, and its
    flag is set after its pixels). The key hashes the dataset identity, the image ids and the preprocessing settings,
    so a change of any of them opens a fresh cache instead of serving stale images.
    """

    def __init__(self, key: dict, image_ids: list[str], shape: tuple[int, int], root: str | Path | None = None):
        ids_digest = hashlib.sha256("\n".join(image_ids).encode()).hexdigest()
        identity = json.dumps(key | {"ids": ids_digest, "shape": list(shape)}, sort_keys=True)
        self.dir = Path(root or DEFAULT_DIR) / hashlib.sha256(identity.encode()).hexdigest()[:16]
        self.dir.mkdir(parents=True, exist_ok=True)
        self.row = {image_id: i for i, image_id in enumerate(image_ids)}
        self.shape = (len(image_ids), *shape, 3)
        meta = self.dir / "meta.json"
        if not meta.exists():
            np.lib.format.open_memmap(self.dir / "images.npy", "w+", np.uint8, self.shape).flush()
            np.lib.format.open_memmap(self.dir / "filled.npy", "w+", np.uint8, (len(image_ids),)).flush()
            meta.write_text(json.dumps(json.loads(identity), indent=2))
        self._images = self._filled = None

    def __getstate__(self) -> dict:
        return self.__dict__ | {"_images": None, "_filled": None}

    def _open(self) -> None:
        if self._images is None:
            self._images = np.load(self.dir / "images.npy", mmap_mode="r+")
            self._filled = np.load(self.dir / "filled.npy", mmap_mode="r+")

    def get(self, image_id: str) -> np.ndarray | None:
        self._open()
        row = self.row[image_id]
        return np.array(self._images[row]) if self._filled[row] else None

    def put(self, image_id: str, image: np.ndarray) -> None:
        self._open()
        row = self.row[image_id]
        self._images[row] = image
        self._filled[row] = 1

    def filled(self) -> int:
        self._open()
        return int(self._filled.sum())
