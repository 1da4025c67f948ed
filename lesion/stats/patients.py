"""Figures over patients: the ISIC 2024 Challenge's top-15-lesions-per-patient sensitivity, and bootstrap CIs that
resample patients (a patient's lesions are not independent, so resampling lesions makes intervals too narrow)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from lesion.stats.metrics import partial_auroc


def top_k_sensitivity(scores: np.ndarray, target: np.ndarray, groups: np.ndarray, k: int = 15) -> float:
    """The share of malignant lesions among their patient's `k` highest-scored lesions (ties: the first listed):
    what a dermatologist who examines the top 15 flagged lesions of each patient would catch."""
    order = pd.Series(scores).groupby(np.asarray(groups), sort=False).rank(method="first", ascending=False)
    positive = np.asarray(target) == 1
    return float((order.to_numpy()[positive] <= k).mean())


def pauc80(scores: np.ndarray, target: np.ndarray) -> float:
    """The ISIC 2024 partial AUC above 80% sensitivity (lesion.stats.metrics.partial_auroc; maximum 0.2)."""
    return float(partial_auroc(torch.tensor(np.asarray(scores, np.float64)), torch.tensor(np.asarray(target))))


FIGURES: dict[str, Callable] = {
    "pauc80": lambda s, y, g: pauc80(s, y),
    "auroc": lambda s, y, g: roc_auc_score(y, s),
    "top15_sensitivity": lambda s, y, g: top_k_sensitivity(s, y, g, 15),
}


def patient_resamples(target: np.ndarray, groups: np.ndarray, resamples: int, seed: int = 0):
    """Yield `resamples` bootstrap draws of patients with replacement, as (rows, group of each row): a patient drawn
    twice brings all their lesions twice, as two patients. Draws without a malignant or a benign lesion are redrawn."""
    codes, _ = pd.factorize(np.asarray(groups))
    members = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes)
    starts = np.r_[0, np.cumsum(sizes)]
    rng = np.random.default_rng(seed)
    done = 0
    while done < resamples:
        chosen = rng.integers(0, len(sizes), len(sizes))
        rows = np.concatenate([members[starts[p] : starts[p + 1]] for p in chosen])
        if target[rows].min() == target[rows].max():
            continue
        done += 1
        yield rows, np.repeat(np.arange(len(chosen)), sizes[chosen])


def patient_figures(
    scores: np.ndarray,
    target: np.ndarray,
    groups: np.ndarray,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, float | list[float]]:
    """pAUC80, AUROC and top-15 sensitivity, each with a percentile bootstrap CI over patients (patient_resamples)."""
    scores, target, groups = np.asarray(scores, np.float64), np.asarray(target), np.asarray(groups)
    out: dict[str, float | list[float]] = {name: f(scores, target, groups) for name, f in FIGURES.items()}
    drawn: dict[str, list[float]] = {name: [] for name in FIGURES}
    for rows, relabelled in patient_resamples(target, groups, resamples, seed):
        for name, f in FIGURES.items():
            drawn[name].append(f(scores[rows], target[rows], relabelled))
    tail = (1 - level) / 2 * 100
    if resamples > 0:
        out |= {f"{name}_ci": np.percentile(v, [tail, 100 - tail]).tolist() for name, v in drawn.items()}
    return out


def paired_difference(
    a: np.ndarray,
    b: np.ndarray,
    target: np.ndarray,
    groups: np.ndarray,
    figure: str = "auroc",
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, float | list[float]]:
    """figure(a) - figure(b) on the same lesions, with a bootstrap CI over patients shared by both scores (their
    common noise cancels): the honest answer to "does a beat b on this split"."""
    f = FIGURES[figure]
    a, b, target, groups = (np.asarray(v) for v in (a, b, target, groups))
    diffs = [
        f(a[rows], target[rows], g) - f(b[rows], target[rows], g)
        for rows, g in patient_resamples(target, groups, resamples, seed)
    ]
    tail = (1 - level) / 2 * 100
    return {
        "difference": f(a, target, groups) - f(b, target, groups),
        "ci": np.percentile(diffs, [tail, 100 - tail]).tolist(),
    }
