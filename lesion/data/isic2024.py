"""ISIC 2024 (SLICE-3D): JPEG bytes in train-image.hdf5 (or train-image/image/*.jpg) and train-metadata.csv."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from lesion.data.datamodule import LesionDataModule
from lesion.data.readers import FileReader, Hdf5Reader, read_table
from lesion.data.splits import assign_folds

log = logging.getLogger("lesion")

# Every column of the challenge's train-metadata.csv, in its order (ISIC 2024 Challenge, Kaggle isic-2024-challenge).
COLUMNS = (
    "isic_id", "target", "patient_id", "age_approx", "sex", "anatom_site_general", "clin_size_long_diam_mm",
    "image_type", "tbp_tile_type", "tbp_lv_A", "tbp_lv_Aext", "tbp_lv_B", "tbp_lv_Bext", "tbp_lv_C", "tbp_lv_Cext",
    "tbp_lv_H", "tbp_lv_Hext", "tbp_lv_L", "tbp_lv_Lext", "tbp_lv_areaMM2", "tbp_lv_area_perim_ratio",
    "tbp_lv_color_std_mean", "tbp_lv_deltaA", "tbp_lv_deltaB", "tbp_lv_deltaL", "tbp_lv_deltaLB",
    "tbp_lv_deltaLBnorm", "tbp_lv_eccentricity", "tbp_lv_location", "tbp_lv_location_simple", "tbp_lv_minorAxisMM",
    "tbp_lv_nevi_confidence", "tbp_lv_norm_border", "tbp_lv_norm_color", "tbp_lv_perimeterMM",
    "tbp_lv_radial_color_std_max", "tbp_lv_stdL", "tbp_lv_stdLExt", "tbp_lv_symm_2axis", "tbp_lv_symm_2axis_angle",
    "tbp_lv_x", "tbp_lv_y", "tbp_lv_z", "attribution", "copyright_license", "lesion_id", "iddx_full", "iddx_1",
    "iddx_2", "iddx_3", "iddx_4", "iddx_5", "mel_mitotic_index", "mel_thick_mm", "tbp_lv_dnn_lesion_confidence",
)  # fmt: skip
# Columns present only in the training metadata (labels, or derived from histopathology): they must never reach a
# model input. `target` becomes `label` and is dropped with the rest.
TRAIN_ONLY = (
    "target",
    "lesion_id",
    "iddx_full",
    "iddx_1",
    "iddx_2",
    "iddx_3",
    "iddx_4",
    "iddx_5",
    "mel_mitotic_index",
    "mel_thick_mm",
    "tbp_lv_dnn_lesion_confidence",
)
# The columns of the challenge's test-metadata.csv: all a model may read.
TEST_COLUMNS = tuple(c for c in COLUMNS if c not in TRAIN_ONLY)


class Isic2024DataModule(LesionDataModule):
    """Images stream from disk, one HDF5 handle per process. A held-out test set (data.test_fraction) and
    data.num_folds folds of the rest are stratified and grouped by patient_id; fold data.fold is validation.
    With data.neg_ratio, training negatives are undersampled afresh every epoch; val and test use every image."""

    classes = ("benign", "malignant")
    malignant = ("malignant",)
    group_column = "patient_id"
    train_only = TRAIN_ONLY  # never a feature of the stack (stack.py refuses them by name)

    def __init__(self, data_config: dict, root: str, fold: int = 0, num_folds: int = 5, **kwargs):
        super().__init__(data_config, **kwargs)
        self.root, self.fold, self.num_folds = Path(root), fold, num_folds

    def load_frame(self) -> pd.DataFrame:
        table = read_table(self.root / "train-metadata.csv", ["isic_id", "target", "patient_id"], "ISIC 2024 metadata")
        labels = pd.to_numeric(table["target"], errors="coerce")
        bad = table.index[~labels.isin([0, 1])]
        if len(bad):
            raise ValueError(f"{self.root / 'train-metadata.csv'}: target must be 0 or 1; rows {list(bad[:20] + 2)}")
        unknown = [c for c in table.columns if c not in COLUMNS]
        if unknown:  # a column the challenge's test metadata lacks could be a label in disguise: never a feature
            log.info("%s: columns not in the challenge's metadata, kept from every model input: %s", self.root, unknown)
        frame = table[[c for c in table.columns if c in TEST_COLUMNS]].copy()
        frame.insert(0, "image_id", table["isic_id"].astype(str))
        frame["label"] = labels.to_numpy(np.int64)
        return frame

    def reader(self) -> Hdf5Reader | FileReader:
        hdf5 = self.root / "train-image.hdf5"
        if hdf5.is_file():
            return Hdf5Reader(hdf5)
        folder = self.root / "train-image" / "image"
        if not folder.is_dir():
            raise FileNotFoundError(f"neither {hdf5} nor {folder}/ exists; check data.root")
        if not hasattr(self, "_paths"):
            ids = pd.read_csv(self.root / "train-metadata.csv", usecols=["isic_id"])["isic_id"].astype(str)
            self._paths = {i: str(folder / f"{i}.jpg") for i in ids}
        return FileReader(self._paths)

    def carve(self, pool: pd.DataFrame, need: tuple[str, ...]) -> pd.Series:
        return assign_folds(pool, self.fold, self.num_folds, self.group_column, self.test_fraction, self.seed)
