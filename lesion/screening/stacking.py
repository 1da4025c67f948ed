"""The tabular stack, as the ISIC 2024 Challenge was won: gradient-boosted trees over each lesion's tabular features,
its patient context and its out-of-fold image score, cross-fitted on patient-grouped folds, calibrated and given an
operating point on their out-of-fold scores, and measured on held-out patients."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import StratifiedGroupKFold
from tqdm import tqdm

from lesion.data.tabular import feature_columns, patient_relative, tabular_features
from lesion.models.trees import TreeStack, fit_trees, importance, tree_logits
from lesion.stats.calibration import fit_platt, platt_scale
from lesion.stats.operating_point import choose_operating_point
from lesion.stats.patients import patient_figures

SCORE_COLUMNS = ("image_id", "split", "y_malignant")  # a scores table's required columns (train.py's scores.csv)
# The ablation, on the same folds: what each row gives the trees (None: the image score itself, no trees).
VARIANTS = {
    "image score alone": None,
    "trees without the image score": {"image": False, "relative": True, "duckling": True},
    "trees + image score": {"image": True, "relative": False, "duckling": False},
    "+ patient context": {"image": True, "relative": True, "duckling": False},
    "+ ugly duckling": {"image": True, "relative": True, "duckling": True},
}


def read_scores(path) -> pd.DataFrame:
    """A scores table (image_id, split, y_malignant, and image_score, fold, image_ud where present): the rows
    whose split is `test` are held out; every other row is fitted on and must have been scored by an image model
    that never trained on it (an out-of-fold or validation score)."""
    table = pd.read_csv(path, dtype={"image_id": str})
    missing = [c for c in SCORE_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            f"{path}: a scores table needs the columns {list(SCORE_COLUMNS)}; it lacks {missing}. Write one with "
            "python train.py -m experiment=isic2024_oof ... (oof_scores.csv in the sweep dir) or scores=true"
        )
    if table["image_id"].duplicated().any():
        raise ValueError(
            f"{path}: image ids listed twice, e.g. {table['image_id'][table['image_id'].duplicated()][:5].tolist()}"
        )
    return table


def join(frame: pd.DataFrame, scores: pd.DataFrame, group_column: str | None) -> pd.DataFrame:
    """The data's frame (its metadata columns) for the scored images, with their scores; an id the data lacks is an
    error, never a dropped row."""
    unknown = sorted(set(scores["image_id"]) - set(frame["image_id"].astype(str)))
    if unknown:
        raise ValueError(
            f"{len(unknown)} image ids of the scores table are not in the data (e.g. {unknown[:5]}): scores= and "
            "data.root must name the same images (the sweep's data.root)"
        )
    frame = frame.assign(image_id=frame["image_id"].astype(str)).drop(columns=["split", "fold"], errors="ignore")
    table = scores.merge(frame, on="image_id", how="left", validate="one_to_one")
    patient = table[group_column].astype(str) if group_column else table["image_id"]
    table = table.drop(columns=[group_column] if group_column else [])  # an id, never a feature
    return table.assign(patient=patient).reset_index(drop=True)


def folds_of(table: pd.DataFrame, fit: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Each fitted row's fold: the image model's (`fold` column) when the table has one, so the trees never see a
    score from a model that trained on the row's patient; else stratified patient-grouped folds."""
    if "fold" in table.columns and table.loc[fit, "fold"].notna().all() and table.loc[fit, "fold"].nunique() > 1:
        return table.loc[fit, "fold"].to_numpy(int)
    splitter = StratifiedGroupKFold(n_splits=count, shuffle=True, random_state=seed)
    folds = np.zeros(fit.sum(), int)
    y, groups = table.loc[fit, "y_malignant"].to_numpy(), table.loc[fit, "patient"].to_numpy()
    for k, (_, held) in enumerate(splitter.split(np.zeros(len(y)), y, groups)):
        folds[held] = k
    return folds


def features(table: pd.DataFrame, columns: list[str], settings: dict, variant: dict) -> pd.DataFrame:
    """The trees' inputs for one variant: the tabular features (lesion.data.tabular), the image score with its
    patient-relative forms, and the image's ugly-duckling distance where the scores table has one."""
    relative, duckling = variant["relative"], variant["duckling"]
    x = tabular_features(table, columns, table["patient"], relative, duckling, settings["engineered"])
    if variant["image"]:
        score = table[["image_score"]].astype("float32")
        x = pd.concat(
            [x, score] + ([patient_relative(score, table["patient"]).iloc[:, :2]] if relative else []), axis=1
        )
        if duckling and "image_ud" in table.columns:
            x["image_ugly_duckling"] = table["image_ud"].astype("float32")
    return x


def cross_fit(x: pd.DataFrame, y: np.ndarray, folds: np.ndarray, settings: dict, desc: str) -> tuple[np.ndarray, list]:
    """Out-of-fold log-odds for the fitted rows and the per-fold boosters (each scores what it never saw)."""
    oof, boosters = np.zeros(len(y)), []
    for k in tqdm(np.unique(folds), desc=desc, unit="fold", leave=False):
        held = folds == k
        booster = fit_trees(x[~held], y[~held], settings["trees"], settings["rounds"], settings["seed"])
        oof[held] = booster.predict(x[held], raw_score=True)
        boosters.append(booster)
    return oof, boosters


def fit_stack(table: pd.DataFrame, settings: dict, forbidden: tuple[str, ...] = ()) -> dict:
    """Cross-fit the full stack (every part of VARIANTS' last row the data has), calibrate it and choose its
    threshold on the out-of-fold scores. Returns the TreeStack and the out-of-fold and test log-odds."""
    fit, test = (table["split"] != "test").to_numpy(), (table["split"] == "test").to_numpy()
    columns = feature_columns(table.drop(columns=["patient", *SCORE_COLUMNS[1:], "image_score", "fold", "image_ud"],
                                         errors="ignore"), settings["features"], forbidden)  # fmt: skip
    image = settings["image_score"] and "image_score" in table.columns
    variant = {"image": image, "relative": settings["patient_relative"], "duckling": settings["ugly_duckling"]}
    variant["engineered"] = settings["engineered"]
    x = features(table, columns, settings, variant)
    y = table["y_malignant"].to_numpy(int)
    folds = folds_of(table, fit, settings["folds"], settings["seed"])
    oof, boosters = cross_fit(x[fit], y[fit], folds, settings, "stack")
    p_oof = torch.sigmoid(torch.from_numpy(oof))
    platt = fit_platt(p_oof, torch.from_numpy(y[fit]))
    calibrated = platt_scale(p_oof, platt)
    op = settings["operating_point"]
    point = choose_operating_point(calibrated, torch.from_numpy(y[fit]), op["target_sensitivity"], op["method"],
                                   op["confidence"])  # fmt: skip
    categories = {c: list(x[c].cat.categories) for c in x.columns if isinstance(x[c].dtype, pd.CategoricalDtype)}
    deployment = {"platt": list(platt), "threshold": point["threshold"], "operating_point": point}
    stack = TreeStack(boosters, list(x.columns), categories, {"columns": columns, **variant}, deployment)
    logits = np.full(len(table), np.nan)
    logits[fit] = oof
    if test.any():
        logits[test] = tree_logits(boosters, x[test])
    return {
        "stack": stack,
        "logits": logits,
        "folds": folds,
        "fit": fit,
        "test": test,
        "importance": importance(boosters),
    }


def ablation(table: pd.DataFrame, settings: dict, fitted: dict, resamples: int) -> pd.DataFrame:
    """Every VARIANTS row on the same folds: out-of-fold figures of the fitted rows, and held-out test figures,
    each with bootstrap CIs over patients."""
    fit, test, folds = fitted["fit"], fitted["test"], fitted["folds"]
    y = table["y_malignant"].to_numpy(int)
    columns = fitted["stack"].settings["columns"]
    rows = []
    for name, variant in VARIANTS.items():
        if (variant is None or variant["image"]) and "image_score" not in table.columns:
            continue
        if variant is None:
            scores = table["image_score"].to_numpy(float)
        else:
            x = features(table, columns, settings, variant)
            scores = np.full(len(table), np.nan)
            scores[fit], boosters = cross_fit(x[fit], y[fit], folds, settings, name)
            if test.any():
                scores[test] = tree_logits(boosters, x[test])
        rows.append({"variant": name} | figures(table, scores, resamples))
    return pd.DataFrame(rows)


def figures(table: pd.DataFrame, scores: np.ndarray, resamples: int, threshold: float | None = None) -> dict:
    """pAUC80, AUROC and top-15 sensitivity (with patient-bootstrap CIs) of the out-of-fold rows (`oof/`) and of the
    held-out test rows (`test/`), where there are any."""
    out = {}
    for name, rows in (("oof", table["split"] != "test"), ("test", table["split"] == "test")):
        rows = rows.to_numpy()
        y = table.loc[rows, "y_malignant"].to_numpy(int)
        if rows.any() and 0 < y.sum() < len(y):
            got = patient_figures(scores[rows], y, table.loc[rows, "patient"].to_numpy(), resamples)
            out |= {f"{name}/{k}": v for k, v in got.items()}
            if threshold is not None:
                flagged = scores[rows] > threshold
                out[f"{name}/recall"] = float(flagged[y == 1].mean())
                out[f"{name}/specificity"] = float((~flagged[y == 0]).mean())
    return out


def stack_scores(stack: TreeStack, table: pd.DataFrame) -> np.ndarray:
    """Calibrated P(malignant) of a fitted stack (stack.json) for new lesions: `table` as `join` builds it (the
    data's columns, image_score where the stack reads one, `patient`). Patient context comes from the lesions of
    each patient in `table`, so score a patient's lesions together."""
    return stack.p_malignant(features(table, stack.settings["columns"], stack.settings, stack.settings))
