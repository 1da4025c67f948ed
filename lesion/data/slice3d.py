"""A synthetic SLICE-3D (ISIC 2024) set whose answer is known: the real schema, and a malignancy signal planted in
the image, in the tabular features, relative to the patient's other lesions, and in a train-only leak column."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from lesion.data.isic2024 import COLUMNS

# Marginals of the real columns (../shared/data/isic2024_sample: median, standard deviation, min, max of 50 tiles).
NUMERIC = {
    "clin_size_long_diam_mm": (3.4, 2.6, 1.0, 30.0),
    "tbp_lv_A": (21.2, 5.3, 5.0, 48.0),
    "tbp_lv_Aext": (15.6, 4.9, 4.0, 40.0),
    "tbp_lv_B": (27.1, 6.4, 5.0, 48.0),
    "tbp_lv_Bext": (26.3, 4.4, 10.0, 42.0),
    "tbp_lv_L": (42.8, 12.3, 5.0, 75.0),
    "tbp_lv_Lext": (52.2, 12.4, 18.0, 82.0),
    "tbp_lv_color_std_mean": (1.0, 1.25, 0.0, 10.0),
    "tbp_lv_eccentricity": (0.75, 0.12, 0.3, 0.99),
    "tbp_lv_nevi_confidence": (2.7, 41.6, 0.0, 100.0),
    "tbp_lv_norm_border": (2.7, 1.8, 0.5, 10.0),
    "tbp_lv_norm_color": (2.9, 2.5, 0.0, 10.0),
    "tbp_lv_radial_color_std_max": (1.0, 0.9, 0.0, 6.0),
    "tbp_lv_stdL": (2.5, 2.2, 0.3, 15.0),
    "tbp_lv_stdLExt": (2.1, 1.4, 0.5, 11.0),
    "tbp_lv_symm_2axis": (0.27, 0.13, 0.05, 0.8),
    "tbp_lv_x": (25.0, 187.0, -420.0, 480.0),
    "tbp_lv_y": (1230.0, 412.0, -120.0, 1750.0),
    "tbp_lv_z": (73.0, 84.0, -160.0, 230.0),
}
SITES = {  # anatom_site_general -> (tbp_lv_location_simple, tbp_lv_location) choices
    "head/neck": (["Head & Neck"], ["Head & Neck"]),
    "upper extremity": (["Left Arm", "Right Arm"], ["Left Arm - Lower", "Right Arm - Upper"]),
    "lower extremity": (["Left Leg", "Right Leg"], ["Left Leg - Upper", "Right Leg - Lower"]),
    "anterior torso": (["Torso Front"], ["Torso Front Top Half", "Torso Front Bottom Half"]),
    "posterior torso": (["Torso Back"], ["Torso Back Top Third", "Torso Back Middle Third"]),
}
CLINICS = ["Memorial Sloan Kettering Cancer Center", "ACEMID MIA", "University Hospital of Basel"]
# How strongly each planted part separates malignant from benign lesions (in the noise's standard deviations).
SIGNAL = {"image": 1.2, "tabular": 0.5, "relative": 1.0, "leak": 6.0}


def slice3d_table(n: int, patients: int, positives: int, seed: int = 0, signal: dict | None = None) -> pd.DataFrame:
    """`n` lesions of `patients` patients (1 to hundreds each, heavy-tailed like SLICE-3D), `positives` malignant,
    every column of the real train-metadata.csv in its order, plus the planted truth the CSV never holds:
    `image_signal` (what the crop shows), and the parts `tabular` (tbp_lv_norm_color, tbp_lv_symm_2axis shifted),
    `relative` (tbp_lv_H and tbp_lv_stdL shifted from the patient's own baseline, which varies widely between
    patients, so the absolute value says little) and `leak` (tbp_lv_dnn_lesion_confidence, a train-only column)."""
    s = SIGNAL | (signal or {})
    rng = np.random.default_rng(seed)
    weights = rng.lognormal(0.0, 1.3, patients)
    patient = np.sort(rng.choice(patients, n, p=weights / weights.sum()))
    y = np.zeros(n, np.int64)
    y[rng.choice(n, positives, replace=False)] = 1
    frame = {"isic_id": [f"ISIC_{i:07d}" for i in rng.permutation(10_000_000)[:n]], "target": y}
    frame["patient_id"] = np.array([f"IP_{p:07d}" for p in range(patients)])[patient]
    frame["age_approx"] = (np.clip(rng.normal(58, 13, patients), 20, 85) // 5 * 5)[patient]
    frame["sex"] = rng.choice(np.array(["male", "female", None], object), patients, p=[0.6, 0.38, 0.02])[patient]
    site = rng.choice(list(SITES), n)
    frame["anatom_site_general"] = site
    for column, (median, std, low, high) in NUMERIC.items():
        frame[column] = np.clip(rng.normal(median, std, n), low, high)
    frame["tbp_lv_norm_color"] = np.clip(frame["tbp_lv_norm_color"] + s["tabular"] * 2.5 * y, 0, 10)
    frame["tbp_lv_symm_2axis"] = np.clip(frame["tbp_lv_symm_2axis"] + s["tabular"] * 0.13 * y, 0.05, 0.8)
    # The ugly duckling: a patient's lesions share a hue and texture; a malignant one departs from them.
    for column, centre, between, spread in (("tbp_lv_H", 52.0, 8.0, 1.5), ("tbp_lv_stdL", 2.5, 2.0, 0.5)):
        baseline = rng.normal(centre, between, patients)  # each patient's own; lesions scatter `spread` around it
        frame[column] = np.clip(baseline[patient] + rng.normal(0, spread, n) + s["relative"] * spread * y, 0, None)
    frame["image_type"] = "TBP tile: close-up"
    frame["tbp_tile_type"] = rng.choice(["3D: white", "3D: XP"], n, p=[0.6, 0.4])
    table = pd.DataFrame(frame)
    _derived(table, rng)
    simple, location = zip(*[(rng.choice(SITES[x][0]), rng.choice(SITES[x][1])) for x in site])
    table["tbp_lv_location"], table["tbp_lv_location_simple"] = location, simple
    table["attribution"] = rng.choice(CLINICS, patients)[patient]
    table["copyright_license"] = rng.choice(["CC-BY", "CC-BY-NC", "CC-0"], n, p=[0.6, 0.3, 0.1])
    table["lesion_id"] = np.where(y == 1, [f"IL_{i:07d}" for i in range(n)], None)
    table["iddx_full"] = np.where(y == 1, "Malignant::Malignant melanocytic proliferations (Melanoma)", "Benign")
    table["iddx_1"] = np.where(y == 1, "Malignant", "Benign")
    table["iddx_2"] = np.where(y == 1, "Malignant melanocytic proliferations (Melanoma)", None)
    invasive = (y == 1) & (rng.random(n) < 0.5)
    table["iddx_3"] = np.where(invasive, "Melanoma Invasive", np.where(y == 1, "Melanoma in situ", None))
    table["iddx_4"] = np.where(invasive, "Melanoma Invasive, Superficial spreading", None)
    table["iddx_5"] = np.nan
    table["mel_mitotic_index"] = np.where(y == 1, "0/mm^2", None)
    table["mel_thick_mm"] = np.where(y == 1, 0.3, np.nan)
    confidence = 100 - np.abs(rng.normal(0, 1, n)) * 5 - s["leak"] * 5 * y
    table["tbp_lv_dnn_lesion_confidence"] = np.clip(confidence, 0, 100)
    table = table[list(COLUMNS)]
    table["image_signal"] = rng.normal(0, 1, n) + s["image"] * y
    return table


def _derived(table: pd.DataFrame, rng: np.random.Generator) -> None:
    """Columns the TBP software derives from others, derived the same way (CIELAB chroma and hue, lesion minus
    surround contrasts, area and perimeter from the diameters)."""
    for side in ("", "ext"):
        a, b = table[f"tbp_lv_A{side}"], table[f"tbp_lv_B{side}"]
        table[f"tbp_lv_C{side}"] = np.hypot(a, b)
        if side:
            table["tbp_lv_Hext"] = np.degrees(np.arctan2(b, a))
    for c in ("A", "B", "L"):
        table[f"tbp_lv_delta{c}"] = table[f"tbp_lv_{c}"] - table[f"tbp_lv_{c}ext"]
    table["tbp_lv_deltaLB"] = np.hypot(table["tbp_lv_deltaL"], table["tbp_lv_deltaB"])
    table["tbp_lv_deltaLBnorm"] = table["tbp_lv_deltaLB"] * rng.uniform(0.7, 1.0, len(table))
    long, ecc = table["clin_size_long_diam_mm"], table["tbp_lv_eccentricity"]
    table["tbp_lv_minorAxisMM"] = long * np.sqrt(1 - ecc**2)
    table["tbp_lv_areaMM2"] = np.pi / 4 * long * table["tbp_lv_minorAxisMM"]
    table["tbp_lv_perimeterMM"] = np.pi * (long + table["tbp_lv_minorAxisMM"]) / 2 * table["tbp_lv_norm_border"] / 2.7
    table["tbp_lv_area_perim_ratio"] = table["tbp_lv_perimeterMM"] ** 2 / table["tbp_lv_areaMM2"]
    table["tbp_lv_symm_2axis_angle"] = rng.integers(0, 36, len(table)) * 5


def crop(rng: np.random.Generator, signal: float, side: int) -> bytes:
    """A TBP-tile-like crop `side` px square: skin, a lesion whose darkness and border irregularity grow with
    `signal`, noise; JPEG quality 90 like the challenge's tiles."""
    skin = rng.uniform([150, 110, 90], [235, 190, 170])
    image = np.ones((side, side, 3), np.float32) * skin
    yy, xx = np.mgrid[:side, :side] / side - 0.5
    wobble = 0.02 + 0.02 * np.clip(signal, 0, 3)
    radius = 0.18 + wobble * np.sin(np.arctan2(yy, xx) * rng.integers(3, 7) + rng.uniform(0, 6))
    blob = (np.hypot(xx, yy) < radius).astype(np.float32)
    darkness = np.clip(0.35 + 0.12 * signal, 0.1, 0.85)
    image = image * (1 - darkness * cv2.GaussianBlur(blob, (9, 9), 3)[..., None])
    image += rng.normal(0, 6, image.shape)
    return cv2.imencode(".jpg", np.clip(image, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def write_slice3d(
    root: str | Path,
    table: pd.DataFrame,
    hdf5: bool = True,
    folder: bool = False,
    pool: int | None = None,
    seed: int = 0,
) -> Path:
    """The Kaggle isic-2024-challenge layout in `root`: train-metadata.csv (the real columns only, never the planted
    truth) and the crops, in train-image.hdf5 and/or train-image/image/*.jpg. Sides 89-171 px like the real tiles.
    `pool`: render that many crops over the range of image_signal and give each lesion the nearest one (a 401k-row
    set in minutes; what decoding costs is unchanged)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    signal = table["image_signal"].to_numpy()
    if pool:
        levels = np.linspace(signal.min(), signal.max(), pool)
        rendered = [crop(rng, v, int(rng.integers(89, 172))) for v in levels]
        nearest = np.clip(np.searchsorted(levels, signal), 0, pool - 1)
        images = (rendered[k] for k in nearest)
    else:
        images = (crop(rng, v, int(rng.integers(89, 172))) for v in signal)
    table[list(COLUMNS)].to_csv(root / "train-metadata.csv", index=False)
    if folder:
        (root / "train-image" / "image").mkdir(parents=True, exist_ok=True)
    h5 = None
    if hdf5:
        import h5py

        h5 = h5py.File(root / "train-image.hdf5", "w")
    try:
        for image_id, data in tqdm(zip(table["isic_id"], images), total=len(table), desc="crops", mininterval=5):
            if h5 is not None:
                h5.create_dataset(image_id, data=np.void(data))
            if folder:
                (root / "train-image" / "image" / f"{image_id}.jpg").write_bytes(data)
    finally:
        if h5 is not None:
            h5.close()
    return root


def simulated_scores(table: pd.DataFrame, num_folds: int = 5, noise: float = 1.0, seed: int = 0) -> pd.DataFrame:
    """The scores table an out-of-fold sweep (train.py -m experiment=isic2024_oof) would write for this set, with
    an image model that reads the planted image signal through N(0, noise) noise: the same held-out test patients
    and patient-grouped folds as data=isic2024 (lesion.data.splits.assign_folds), split "train" with its fold for
    every out-of-fold row. For the stack's tests and benchmark, where no image model is trained."""
    from lesion.data.splits import assign_folds

    frame = table.rename(columns={"isic_id": "image_id", "target": "label"})
    split, fold = None, np.full(len(frame), -1)
    for k in range(num_folds):
        split = assign_folds(frame, k, num_folds, "patient_id", 0.15, seed).to_numpy()
        fold[split == "val"] = k
    rng = np.random.default_rng(seed + 1)
    return pd.DataFrame(
        {
            "image_id": frame["image_id"],
            "split": np.where(split == "test", "test", "train"),
            "fold": np.where(split == "test", np.nan, fold),
            "y_malignant": frame["label"],
            "image_score": table["image_signal"] + rng.normal(0, noise, len(table)),
        }
    )
