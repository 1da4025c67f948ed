"""Leak-free splits: stratified by class, grouped by lesion or patient, seeded, saved and reusable as CSV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

SPLITS = ("train", "val", "test")


def _one_fold(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of about `fraction` of the rows, stratified by label, never splitting a group."""
    n_splits = max(2, int(round(1 / fraction)))
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    try:
        _, held = next(folds.split(np.zeros(len(labels)), labels, groups))
    except ValueError as err:
        counts = dict(zip(*np.unique(labels, return_counts=True)))
        raise ValueError(
            f"too few images to carve a {fraction:.0%} split stratified by class (label counts {counts}): {err} "
            "Lower data.val_fraction/test_fraction, or give data.split_file"
        ) from err
    mask = np.zeros(len(labels), bool)
    mask[held] = True
    return mask


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
        share = fraction / remaining.mean()  # a fraction of the whole, taken from what is left
        sub = frame[remaining]
        mask = _one_fold(sub["label"].to_numpy(), _groups(sub, group_column), share, seed)
        idx = np.flatnonzero(remaining)[mask]
        split.iloc[idx] = name
        remaining[idx] = False
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
    bad = sorted(set(table["split"]) - set(SPLITS))
    if bad:
        raise ValueError(f"{path}: unknown split names {bad}; use {list(SPLITS)}")
    mapping = table.set_index("image_id")["split"]
    missing = image_ids[~image_ids.isin(mapping.index)].tolist()
    if missing:
        raise ValueError(f"{path} has no split for {len(missing)} images of the dataset: {_first(missing)}")
    unknown = sorted(set(mapping.index) - set(image_ids))
    if unknown:
        raise ValueError(f"{path} names {len(unknown)} images the dataset does not have: {_first(unknown)}")
    return image_ids.map(mapping)


def write_split_file(frames: dict[str, pd.DataFrame], path: str | Path) -> Path:
    path = Path(path)
    rows = [pd.DataFrame({"image_id": f["image_id"], "split": s}) for s, f in frames.items()]
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
