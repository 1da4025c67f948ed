"""HAM10000 as distributed: HAM10000_metadata.csv and images in _part_1/_part_2 or one folder; metadata kept."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lesion.data.datamodule import LesionDataModule
from lesion.data.isic2018 import DIAGNOSES, task_labels
from lesion.data.readers import FileReader, image_paths, read_table
from lesion.data.splits import _first

IMAGE_DIRS = (
    "HAM10000_images_part_1",
    "HAM10000_images_part_2",
    "HAM10000_images",
    "images",
    "ISIC2018_Task3_Training_Input",
    ".",
)


class Ham10000DataModule(LesionDataModule):
    """Tschandl et al., Sci. Data 5, 180161 (2018). Splits are grouped by lesion_id; metadata (age, sex,
    localization, dx_type) stays in the split frames for the fairness report."""

    group_column = "lesion_id"
    train_only = ("diagnosis", "dx", "dx_type")  # the answer, and how it was confirmed: never a stack feature

    def __init__(self, data_config: dict, root: str, task: str = "binary", **kwargs):
        super().__init__(data_config, **kwargs)
        self.root, self.task = Path(root), task
        _, self.classes, self.malignant = task_labels(pd.Series([], dtype=str), task)
        self._paths: dict[str, str] = {}

    def load_frame(self) -> pd.DataFrame:
        path = self.root / "HAM10000_metadata.csv"
        frame = read_table(path, ["lesion_id", "image_id", "dx"], what="HAM10000 metadata")
        unknown = frame.index[~frame["dx"].str.upper().isin(DIAGNOSES)]
        if len(unknown):
            rows = [f"row {i + 2} ({frame['dx'].iloc[i]!r})" for i in unknown]
            raise ValueError(f"{path}: dx must be one of {[d.lower() for d in DIAGNOSES]}; not: {_first(rows)}")
        found: dict[str, str] = {}
        for folder in IMAGE_DIRS:
            found |= image_paths(self.root / folder)
        default = self.root / IMAGE_DIRS[0]
        self._paths = {i: found.get(i, str(default / f"{i}.jpg")) for i in frame["image_id"].astype(str)}
        frame["image_id"] = frame["image_id"].astype(str)
        frame["diagnosis"] = frame["dx"]
        frame["label"] = task_labels(frame["dx"], self.task)[0]
        return frame

    def reader(self) -> FileReader:
        return FileReader(self._paths)
