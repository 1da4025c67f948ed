"""A CSV of image paths and labels: `data.root` + `data.csv` (e.g. PAD-UFES-20's metadata.csv, Derm7pt, DDI).

One row per image: `image_column` (a path relative to `data.root`), `label_column` (a class name), optionally
`split_column` (train/val/test), `group_column` (lesion or patient, for leak-free carving) and any metadata columns,
which are kept for the fairness report (e.g. `fitzpatrick`, `age`, `sex`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lesion.data.datamodule import LesionDataModule
from lesion.data.readers import FileReader, read_table
from lesion.data.splits import SPLITS


class CsvDataModule(LesionDataModule):
    """`malignant` names the malignant label values; `task=binary` merges the rest into benign."""

    def __init__(
        self,
        data_config: dict,
        root: str,
        csv: str,
        image_column: str = "image",
        label_column: str = "label",
        malignant: list[str] = ("malignant",),
        classes: list[str] | None = None,
        task: str = "binary",
        split_column: str | None = None,
        group_column: str | None = None,
        **kwargs,
    ):
        super().__init__(data_config, **kwargs)
        if task not in ("binary", "diagnosis"):
            raise ValueError(f"data.task must be 'binary' or 'diagnosis', got {task!r}")
        self.root, self.task = Path(root), task
        self.path = self.root / csv if not Path(csv).is_absolute() else Path(csv)
        self.image_column, self.label_column, self.split_column = image_column, label_column, split_column
        self.group_column = group_column
        self.train_only = (label_column, "diagnosis")  # the answer (its column, and the frame's copy): never a feature
        required = [image_column, label_column] + [c for c in (split_column, group_column) if c]
        self.table = read_table(self.path, required, "data.csv")
        self.table[label_column] = self.table[label_column].astype(str).str.strip()
        names = sorted(self.table[label_column].unique())
        self.label_classes = tuple(classes or names)
        unknown = sorted(set(names) - set(self.label_classes))
        if unknown:
            raise ValueError(f"{self.path}: labels {unknown} are not in data.classes={list(classes)}")
        missing = [m for m in malignant if m not in self.label_classes]
        if missing:
            raise ValueError(f"data.malignant names {missing}, which no row of {self.path} has; labels: {names}")
        self.classes = ("benign", "malignant") if task == "binary" else self.label_classes
        self.malignant = ("malignant",) if task == "binary" else tuple(malignant)
        self._malignant_labels = tuple(malignant)

    def load_frame(self) -> pd.DataFrame:
        table = self.table
        empty = table.index[table[self.image_column].isna()]
        if len(empty):
            raise ValueError(f"{self.path}: rows {list(empty[:20] + 2)} have no {self.image_column!r}")
        paths = [str(self.root / p) for p in table[self.image_column].astype(str)]
        frame = table.drop(columns=[self.image_column]).copy()
        frame.insert(0, "image_id", table[self.image_column].astype(str).str.replace(r"\.[^./]+$", "", regex=True))
        duplicated = frame["image_id"][frame["image_id"].duplicated()].tolist()
        if duplicated:
            raise ValueError(f"{self.path}: images listed twice: {duplicated[:20]}")
        self._paths = dict(zip(frame["image_id"], paths))
        labels = table[self.label_column]
        if self.task == "binary":
            frame["label"] = labels.isin(self._malignant_labels).astype(np.int64).to_numpy()
        else:
            frame["label"] = labels.map({c: i for i, c in enumerate(self.label_classes)}).astype(np.int64).to_numpy()
        frame["diagnosis"] = labels.to_numpy()
        if self.split_column:
            split = table[self.split_column].astype(str).str.lower().str.strip()
            bad = table.index[~split.isin(SPLITS)]
            if len(bad):
                raise ValueError(
                    f"{self.path}: {self.split_column} must be train, val or test; rows {list(bad[:20] + 2)}"
                )
            frame = frame.drop(columns=[self.split_column])
            frame["split"] = split.to_numpy()
        return frame

    def reader(self) -> FileReader:
        return FileReader(self._paths)
