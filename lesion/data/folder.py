"""Plain image folders: root/<class>/*.jpg, or root/<split>/<class>/*.jpg (e.g. the 9-class "Skin cancer ISIC" set)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lesion.data.datamodule import LesionDataModule
from lesion.data.readers import FileReader

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
SPLIT_DIRS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


class FolderDataModule(LesionDataModule):
    """One folder per class. `malignant` names the malignant classes; `task=binary` merges the rest into benign.

    Split folders (train/, val/ or valid/, test/, any case) are used as official splits when present.
    """

    def __init__(
        self,
        data_config: dict,
        root: str,
        malignant: list[str] = ("malignant",),
        classes: list[str] | None = None,
        task: str = "diagnosis",
        **kwargs,
    ):
        super().__init__(data_config, **kwargs)
        if task not in ("binary", "diagnosis"):
            raise ValueError(f"data.task must be 'binary' or 'diagnosis', got {task!r}")
        self.root, self.task = Path(root), task
        if not self.root.is_dir():
            raise FileNotFoundError(f"data.root={self.root} is not a folder of class folders")
        found = self._files()
        names = sorted({c for c, _, _ in found})
        self.folder_classes = tuple(classes or names)
        unknown = [m for m in malignant if m not in self.folder_classes]
        if unknown:
            raise ValueError(f"data.malignant names {unknown}, which are not class folders of {self.root}: {names}")
        extra = sorted(set(names) - set(self.folder_classes))
        if extra:
            raise ValueError(f"{self.root} has class folders {extra} not listed in data.classes={list(classes)}")
        self.classes = ("benign", "malignant") if task == "binary" else self.folder_classes
        self.malignant = ("malignant",) if task == "binary" else tuple(malignant)
        self._malignant_folders = tuple(malignant)
        self._found = found

    def load_frame(self) -> pd.DataFrame:
        if not self._found:
            raise FileNotFoundError(f"no images ({', '.join(EXTENSIONS)}) under {self.root}/<class>/")
        cls, split, paths = (list(x) for x in zip(*self._found))
        ids = [str(Path(p).relative_to(self.root).with_suffix("")) for p in paths]
        self._paths = dict(zip(ids, paths))
        frame = pd.DataFrame({"image_id": ids, "diagnosis": cls, "split": split})
        if self.task == "binary":
            frame["label"] = frame["diagnosis"].isin(self._malignant_folders).astype(np.int64)
        else:
            frame["label"] = frame["diagnosis"].map({c: i for i, c in enumerate(self.folder_classes)})
        if frame["split"].isna().all():
            frame = frame.drop(columns="split")
        return frame

    def reader(self) -> FileReader:
        return FileReader(self._paths)

    def _files(self) -> list[tuple[str, str | None, str]]:
        """(class, split or None, path) for every image."""
        subdirs = [d for d in sorted(self.root.iterdir()) if d.is_dir()]
        split_dirs = [d for d in subdirs if d.name.lower() in SPLIT_DIRS]
        layout = [(SPLIT_DIRS[d.name.lower()], d) for d in split_dirs] if split_dirs else [(None, self.root)]
        found = []
        for split, base in layout:
            for class_dir in sorted(d for d in base.iterdir() if d.is_dir()):
                for path in sorted(class_dir.iterdir()):
                    if path.suffix.lower() in EXTENSIONS:
                        found.append((class_dir.name, split, str(path)))
        return found
