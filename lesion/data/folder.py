"""Plain image folders: root/<class>/*.jpg, or root/<split>/<class>/*.jpg (e.g. the 9-class "Skin cancer ISIC" set)."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from lesion.data.datamodule import LesionDataModule
from lesion.data.readers import IMAGE_SUFFIXES, FileReader

EXTENSIONS = IMAGE_SUFFIXES
log = logging.getLogger(__name__)
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
        """(class, split or None, path) for every image; what the layout leaves out is logged as warnings, counted."""
        subdirs = [d for d in sorted(self.root.iterdir()) if d.is_dir()]
        split_dirs = [d for d in subdirs if d.name.lower() in SPLIT_DIRS]
        layout = [(SPLIT_DIRS[d.name.lower()], d) for d in split_dirs] if split_dirs else [(None, self.root)]
        found, skipped = [], Counter()  # skipped: extension -> files
        nested, loose = Counter(), Counter()  # files in folders below a class folder; files where classes are
        for split, base in layout:
            for entry in sorted(base.iterdir()):
                if not entry.is_dir():
                    loose[str(entry.parent)] += 1
                    continue
                for path in sorted(entry.iterdir()):
                    if path.is_dir():
                        nested[str(path)] += sum(1 for p in path.rglob("*") if p.is_file())
                    elif path.suffix.lower() in EXTENSIONS:
                        found.append((entry.name, split, str(path)))
                    else:
                        skipped[path.suffix.lower() or "(no extension)"] += 1
        if split_dirs:
            beside = {d.name: sum(1 for p in d.rglob("*") if p.is_file()) for d in subdirs if d not in split_dirs}
            if beside:
                log.warning(
                    "%s: folders beside the split folders %s are ignored (files: %s); move them into a split folder",
                    self.root,
                    [d.name for d in split_dirs],
                    beside,
                )
        if skipped:
            log.warning(
                "%s: %d files with extensions other than %s are ignored (%s); convert them to use them",
                self.root,
                sum(skipped.values()),
                ", ".join(EXTENSIONS),
                dict(skipped),
            )
        if nested:
            log.warning(
                "%s: class folders are not searched recursively: %d files in %d subfolders are ignored (%s)",
                self.root,
                sum(nested.values()),
                len(nested),
                _first(nested),
            )
        if loose:
            log.warning(
                "%s: %d files outside class folders are ignored (%s)", self.root, sum(loose.values()), _first(loose)
            )
        return found


def _first(counts: Counter, n: int = 5) -> str:
    items = [f"{k}: {v}" for k, v in counts.most_common(n)]
    return ", ".join(items) + (f", ... ({len(counts)} in all)" if len(counts) > n else "")
