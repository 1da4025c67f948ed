"""Leak-free splits: stratified by class, grouped by lesion or patient, seeded, saved and reusable as CSV."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

SPLITS = ("train", "val", "test")
# data.calibration_fraction > 0: a further split, carved like val, that only calibrates and sets the operating point
CALIBRATION = "calibration"
log = logging.getLogger(__name__)


def _carve(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of `fraction` of the rows, stratified by label, never splitting a group.

    Each group is filed under its rarest label (a lesion has one diagnosis; a patient with a malignant lesion is a
    malignant patient), and of each label's groups, in a seeded random order, the prefix whose image count is nearest
    to `fraction` of that label's images is taken: every label's share, and so the total, is the asked fraction to
    within one group. Each label gives at least one group and keeps one, so both sides have every class."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"label": labels, "group": groups})
    frequency = frame["label"].value_counts()
    by_group = frame.groupby("group", sort=True)
    size = by_group.size()
    key = by_group["label"].agg(lambda ls: min(ls.unique(), key=lambda label: (frequency[label], str(label))))
    chosen = []
    for label in sorted(key.unique(), key=str):
        members = key.index[key == label].to_numpy()
        members = members[rng.permutation(len(members))]
        counts = np.cumsum(size.loc[members].to_numpy())
        target = fraction * counts[-1]
        take = int(np.argmin(np.abs(np.concatenate([[0], counts]) - target)))  # groups taken: 0 .. all
        if len(members) < 2:
            raise ValueError(
                f"too few images to carve a {fraction:.0%} split stratified by class: class {label} has "
                f"{len(members)} group (lesion, patient or image) left, and the split and the rest each need one. "
                "Lower data.val_fraction/test_fraction, or give data.split_file"
            )
        take = min(max(take, 1), len(members) - 1)  # the carved split and the rest both keep this class
        chosen.extend(members[:take])
    return frame["group"].isin(set(chosen)).to_numpy()


def _groups(frame: pd.DataFrame, group_column: str | None) -> np.ndarray:
    if group_column is None:
        return np.arange(len(frame))
    return frame[group_column].fillna(frame["image_id"]).to_numpy()


def assign_splits(
    frame: pd.DataFrame,
    need: tuple[str, ...] = ("val", "test"),
    group_column: str | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> pd.Series:
    """Split names for `frame` rows: `test` and/or `val` carved out (fractions of the whole), the rest `train`."""
    split = pd.Series("train", index=frame.index)
    remaining = np.ones(len(frame), bool)
    for name, fraction in (("test", test_fraction), ("val", val_fraction)):
        if name not in need:
            continue
        if not 0 < fraction < remaining.mean():
            raise ValueError(
                f"data.{name}_fraction={fraction} must be above 0 and below the {remaining.mean():.2f} of the images "
                "still unassigned (data.test_fraction is carved first, then data.val_fraction)"
            )
        share = fraction / remaining.mean()  # a fraction of the whole, taken from what is left
        sub = frame[remaining]
        mask = _carve(sub["label"].to_numpy(), _groups(sub, group_column), share, seed)
        idx = np.flatnonzero(remaining)[mask]
        split.iloc[idx] = name
        remaining[idx] = False
        log.info(
            "%s split: %d of %d images (%.1f%%, asked %.1f%%)",
            name,
            len(idx),
            len(frame),
            100 * len(idx) / len(frame),
            100 * fraction,
        )
    return split


def carve_calibration(
    frame: pd.DataFrame, split: pd.Series, fraction: float, group_column: str | None, seed: int = 0
) -> pd.Series:
    """`split` with `fraction` of all the images (stratified, never dividing a group) moved from train to
    `calibration`: the split that fits the temperature, the Platt map and the threshold, so that the one that chose the
    epoch (val) does not also certify the threshold."""
    pool = (split == "train").to_numpy()
    if not 0 < fraction < pool.mean():
        raise ValueError(
            f"data.calibration_fraction={fraction} must be above 0 and below the {pool.mean():.2f} of the images left "
            "for training (it is carved from them, after val and test)"
        )
    sub = frame[pool]
    mask = _carve(sub["label"].to_numpy(), _groups(sub, group_column), fraction / pool.mean(), seed + 1)
    split = split.copy()
    split.iloc[np.flatnonzero(pool)[mask]] = CALIBRATION
    log.info("calibration split: %d of %d images (asked %.1f%%)", mask.sum(), len(frame), 100 * fraction)
    return split


def assign_folds(
    frame: pd.DataFrame,
    fold: int,
    num_folds: int,
    group_column: str | None,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> pd.Series:
    """A fixed held-out `test` set, then `num_folds` stratified grouped folds of the rest; fold `fold` is `val`."""
    if not 0 <= fold < num_folds:
        raise ValueError(f"data.fold={fold} must be in [0, data.num_folds={num_folds})")
    split = assign_splits(frame, ("test",), group_column, test_fraction=test_fraction, seed=seed)
    rest = np.flatnonzero(split.to_numpy() == "train")
    sub = frame.iloc[rest]
    folds = StratifiedGroupKFold(n_splits=num_folds, shuffle=True, random_state=seed)
    _, held = list(folds.split(np.zeros(len(sub)), sub["label"].to_numpy(), _groups(sub, group_column)))[fold]
    split.iloc[rest[held]] = "val"
    return split


def read_split_file(path: str | Path, image_ids: pd.Series) -> pd.Series:
    """Splits from a CSV written by `write_split_file` (image_id, split), checked against the dataset's ids."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data.split_file={path} does not exist")
    table = pd.read_csv(path, dtype=str)
    for column in ("image_id", "split"):
        if column not in table.columns:
            raise ValueError(f"{path} lacks the column '{column}' (expected image_id,split)")
    bad = sorted(set(table["split"]) - {*SPLITS, CALIBRATION})
    if bad:
        raise ValueError(f"{path}: unknown split names {bad}; use {[*SPLITS, CALIBRATION]}")
    mapping = table.set_index("image_id")["split"]
    missing = image_ids[~image_ids.isin(mapping.index)].tolist()
    if missing:
        raise ValueError(f"{path} has no split for {len(missing)} images of the dataset: {_first(missing)}")
    unknown = sorted(set(mapping.index) - set(image_ids))
    if unknown:
        raise ValueError(f"{path} names {len(unknown)} images the dataset does not have: {_first(unknown)}")
    return image_ids.map(mapping)


def split_groups(frames: dict[str, pd.DataFrame], group_column: str | None) -> dict | None:
    """The group (lesion, patient) of each image per split, in the frames' order, under the group column's name: what
    a checkpoint keeps beside its image ids so the leak guard can refuse a sibling of a training image. None when the
    data has no group column."""
    if not _has_column(frames, group_column):
        return None
    groups = {s: [None if pd.isna(g) else str(g) for g in f[group_column]] for s, f in frames.items()}
    return {"column": group_column, "groups": groups}


def _has_column(frames: dict[str, pd.DataFrame], column: str | None) -> bool:
    return bool(column) and all(column in f.columns for f in frames.values())


def write_split_file(frames: dict[str, pd.DataFrame], path: str | Path, group_column: str | None = None) -> Path:
    """image_id, split (and the group column, when given and present): `data.split_file` reads the first two."""
    path = Path(path)
    grouped = _has_column(frames, group_column)
    rows = [
        pd.DataFrame({"image_id": f["image_id"], "split": s} | ({group_column: f[group_column]} if grouped else {}))
        for s, f in frames.items()
    ]
    pd.concat(rows).to_csv(path, index=False)
    return path


def crossing_groups(frames: dict[str, pd.DataFrame], group_column: str) -> set:
    """Groups (lesions, patients) found in more than one split; empty for a leak-free split."""
    seen: dict = {}
    for split, frame in frames.items():
        for group in frame[group_column].dropna().unique():
            seen.setdefault(group, set()).add(split)
    return {g for g, splits in seen.items() if len(splits) > 1}


def _first(items: list, n: int = 20) -> str:
    return ", ".join(map(str, items[:n])) + (f" ... ({len(items)} in all)" if len(items) > n else f" ({len(items)})")
