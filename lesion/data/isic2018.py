"""ISIC 2018 Task 3 (HAM10000) in the official download layout; official Validation/Test sets used when present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lesion.data.datamodule import LesionDataModule
from lesion.data.readers import FileReader, read_table
from lesion.data.splits import _first

# Codella et al. 2018, arXiv:1902.03368; malignant: melanoma, basal cell carcinoma, actinic keratosis/Bowen's.
DIAGNOSES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
MALIGNANT = ("MEL", "BCC", "AKIEC")
TASKS = ("binary", "diagnosis")
OFFICIAL = {"train": "Training", "val": "Validation", "test": "Test"}


def task_labels(diagnosis: pd.Series, task: str) -> tuple[np.ndarray, tuple[str, ...], tuple[str, ...]]:
    """Labels, class names and malignant names for `binary` (malignant = MEL, BCC, AKIEC) or `diagnosis` (7 classes).

    `diagnosis` holds upper- or lower-case ISIC 2018 codes.
    """
    if task not in TASKS:
        raise ValueError(f"data.task must be one of {TASKS}, got {task!r}")
    codes = diagnosis.str.upper()
    if task == "binary":
        return codes.isin(MALIGNANT).to_numpy(np.int64), ("benign", "malignant"), ("malignant",)
    return codes.map({c: i for i, c in enumerate(DIAGNOSES)}).to_numpy(np.int64), DIAGNOSES, MALIGNANT


class Isic2018DataModule(LesionDataModule):
    """root/ISIC2018_Task3_Training_Input/*.jpg, ..._GroundTruth/..._GroundTruth.csv (one-hot), LesionGroupings.csv.

    Missing val/test splits are carved from training, stratified and grouped by lesion_id.
    """

    group_column = "lesion_id"
    train_only = ("diagnosis", "dx", "dx_type")  # the answer, and how it was confirmed: never a stack feature

    def __init__(self, data_config: dict, root: str, task: str = "binary", download: bool = False, **kwargs):
        super().__init__(data_config, **kwargs)
        self.root, self.task, self.download = Path(root), task, download
        _, self.classes, self.malignant = task_labels(pd.Series([], dtype=str), task)
        self._paths: dict[str, str] = {}

    def load_frame(self) -> pd.DataFrame:
        if self.download:
            from lesion.data.download import download_isic2018

            download_isic2018(self.root)
        frames = [self._official(split) for split in OFFICIAL]
        frame = pd.concat([f for f in frames if f is not None], ignore_index=True)
        groups = read_table(self.root / "ISIC2018_Task3_Training_LesionGroupings.csv", ["image", "lesion_id"])
        frame = frame.merge(groups.rename(columns={"image": "image_id"}), on="image_id", how="left")
        frame["label"] = task_labels(frame["diagnosis"], self.task)[0]
        metadata = self.root / "HAM10000_metadata.csv"  # ships with HAM10000; age, sex, site for fairness reports
        if metadata.is_file():
            extra = pd.read_csv(metadata, usecols=lambda c: c in ("image_id", "age", "sex", "localization", "dx_type"))
            frame = frame.merge(extra.drop_duplicates("image_id"), on="image_id", how="left")
        return frame

    def reader(self) -> FileReader:
        return FileReader(self._paths)

    def _official(self, split: str) -> pd.DataFrame | None:
        name = OFFICIAL[split]
        images = self.root / f"ISIC2018_Task3_{name}_Input"
        truth = self.root / f"ISIC2018_Task3_{name}_GroundTruth" / f"ISIC2018_Task3_{name}_GroundTruth.csv"
        if split != "train" and not (images.is_dir() and truth.is_file()):
            return None
        if not images.is_dir():
            raise FileNotFoundError(
                f"{images} not found: data.root={self.root} must hold the official ISIC 2018 Task 3 layout "
                "(or set data.download=true)"
            )
        table = read_table(truth, ["image", *DIAGNOSES], what="ISIC 2018 ground truth")
        onehot = table[list(DIAGNOSES)].to_numpy(float)
        bad = np.flatnonzero((onehot.sum(1) != 1) | ((onehot != 0) & (onehot != 1)).any(1))
        if len(bad):
            rows = [f"row {i + 2} ({table['image'].iloc[i]})" for i in bad]
            raise ValueError(f"{truth}: rows must be one-hot over {list(DIAGNOSES)}; these are not: {_first(rows)}")
        ids = table["image"].astype(str)
        self._paths.update({i: str(images / f"{i}.jpg") for i in ids})
        return pd.DataFrame({"image_id": ids, "diagnosis": np.array(DIAGNOSES)[onehot.argmax(1)], "split": split})
