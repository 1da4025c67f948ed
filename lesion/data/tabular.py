"""A lesion's tabular features for the stack: the columns a user names, the colour and shape features the ISIC 2024
winners engineered from the TBP columns, each feature relative to the same patient's other lesions, and how far a
lesion's whole vector lies from theirs (the "ugly duckling" sign)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

# Never features: identifiers, free text, and what is constant in the challenge's data.
NOT_FEATURES = ("image_id", "isic_id", "label", "patient_id", "lesion_id", "attribution", "copyright_license")
NOT_FEATURES += ("image_type", "split")


def _col(frame: pd.DataFrame, name: str) -> pd.Series:
    return pd.to_numeric(frame[name], errors="coerce")


# Name -> (TBP columns it needs, how it is computed): contrast with the surrounding skin, shape, colour spread
# (after the feature sets of the ISIC 2024 Challenge's top public solutions).
ENGINEERED = {
    "lesion_size_ratio": (("tbp_lv_minorAxisMM", "clin_size_long_diam_mm"), lambda f: f[0] / f[1]),
    "lesion_shape_index": (("tbp_lv_areaMM2", "tbp_lv_perimeterMM"), lambda f: f[0] / f[1] ** 2),
    "hue_contrast": (("tbp_lv_H", "tbp_lv_Hext"), lambda f: (f[0] - f[1]).abs()),
    "luminance_contrast": (("tbp_lv_L", "tbp_lv_Lext"), lambda f: (f[0] - f[1]).abs()),
    "colour_difference": (("tbp_lv_deltaA", "tbp_lv_deltaB", "tbp_lv_deltaL"), lambda f: np.sqrt(sum(x**2 for x in f))),
    "border_complexity": (("tbp_lv_norm_border", "tbp_lv_symm_2axis"), lambda f: f[0] + f[1]),
    "colour_uniformity": (("tbp_lv_color_std_mean", "tbp_lv_radial_color_std_max"), lambda f: f[0] / (f[1] + 1e-3)),
    "distance_3d": (("tbp_lv_x", "tbp_lv_y", "tbp_lv_z"), lambda f: np.sqrt(sum(x**2 for x in f))),
    "perimeter_to_area": (("tbp_lv_perimeterMM", "tbp_lv_areaMM2"), lambda f: f[0] / f[1]),
    "visibility": (("tbp_lv_deltaLBnorm", "tbp_lv_norm_color"), lambda f: f[0] + f[1]),
    "severity": (("tbp_lv_norm_border", "tbp_lv_norm_color", "tbp_lv_eccentricity"), lambda f: sum(f) / 3),
    "border_colour_product": (("tbp_lv_norm_border", "tbp_lv_norm_color"), lambda f: f[0] * f[1]),
    "luminance_spread_ratio": (("tbp_lv_stdL", "tbp_lv_stdLExt"), lambda f: f[0] / (f[1] + 1e-3)),
    "size_age": (("clin_size_long_diam_mm", "age_approx"), lambda f: f[0] * f[1]),
}


def engineered(frame: pd.DataFrame) -> pd.DataFrame:
    """Every ENGINEERED feature whose TBP columns the frame has (none for a frame without them)."""
    out = {}
    for name, (needs, compute) in ENGINEERED.items():
        if all(c in frame.columns for c in needs):
            out[name] = compute([_col(frame, c) for c in needs]).replace([np.inf, -np.inf], np.nan).astype("float32")
    return pd.DataFrame(out, index=frame.index)


def patient_relative(numeric: pd.DataFrame, groups: pd.Series) -> pd.DataFrame:
    """Each column as its z-score (`_pz`) and percentile rank (`_prank`) among the same patient's lesions, and the
    patient's lesion count. A patient with one lesion has no z-score (NaN: the trees route it as missing)."""
    grouped = numeric.groupby(groups.to_numpy(), sort=False)
    mean, std = grouped.transform("mean"), grouped.transform("std")
    z = ((numeric - mean) / std.where(std > 0)).astype("float32").add_suffix("_pz")
    rank = grouped.rank(pct=True).astype("float32").add_suffix("_prank")
    count = groups.map(groups.value_counts()).astype("float32").rename("patient_lesions")
    return pd.concat([z, rank, count], axis=1)


def ugly_duckling(vectors: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """How far each row lies from its patient's other lesions: the root mean square, over the columns, of the row's
    z-score among the patient's lesions (a column constant within the patient, or missing, is skipped). Computed
    from the patient's own lesions alone, so a lesion scores the same in any table that holds its patient. NaN for
    a patient with fewer than three lesions."""
    frame = pd.DataFrame(np.asarray(vectors, np.float64))
    grouped = frame.groupby(np.asarray(groups), sort=False)
    mean, std = grouped.transform("mean"), grouped.transform("std")
    z = ((frame - mean) / std.where(std > 0)).to_numpy()
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a row with every column skipped is NaN, as it should be
        out = np.sqrt(np.nanmean(z**2, axis=1))
    size = pd.Series(np.asarray(groups)).map(pd.Series(np.asarray(groups)).value_counts()).to_numpy()
    return np.where(size >= 3, out, np.nan)


def feature_columns(frame: pd.DataFrame, named, forbidden: tuple[str, ...] = ()) -> list[str]:
    """The frame's columns a stack reads: `named` (a list), or "auto" for every column but NOT_FEATURES. A named
    column the frame lacks, or one in `forbidden` (a dataset's train-only columns), is an error that names it."""
    if named == "auto":
        return [c for c in frame.columns if c not in NOT_FEATURES and c not in forbidden]
    named = list(named)
    leaking = [c for c in named if c in forbidden or c == "label"]
    if leaking:
        raise ValueError(
            f"features names {leaking}: only the training metadata has them (they carry the label), so a "
            "model fitted on them would fail on new lesions; remove them from features (stack.py features=[...])"
        )
    missing = [c for c in named if c not in frame.columns]
    if missing:
        raise KeyError(f"features names {missing}, which the data has no column for; it has {list(frame.columns)}")
    return named


def tabular_features(
    frame: pd.DataFrame, columns: list[str], groups: pd.Series | None, relative: bool, duckling: bool, derive: bool
) -> pd.DataFrame:
    """The stack's feature table: `columns` (text as pandas categories, numbers as float32), the ENGINEERED ones
    (`derive`), each numeric one relative to its patient (`relative`) and the ugly-duckling distance of the numeric
    vector (`duckling`); the last two need `groups`, each lesion's patient."""
    base = frame[columns].copy()
    text = [c for c in columns if not pd.api.types.is_numeric_dtype(base[c])]
    for c in text:
        base[c] = base[c].astype("category")
    numeric = base.drop(columns=text).astype("float32")
    if derive:
        numeric = pd.concat([numeric, engineered(frame)], axis=1)
    parts = [numeric, base[text]]
    if (relative or duckling) and groups is None:
        raise ValueError("patient context (patient_relative, ugly_duckling) needs the data's patient column")
    if relative:
        parts.append(patient_relative(numeric, groups))
    if duckling:
        parts.append(pd.Series(ugly_duckling(numeric.to_numpy(), groups.to_numpy()), frame.index, name="ugly_duckling"))
    return pd.concat(parts, axis=1)
