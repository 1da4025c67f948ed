"""The operating point: a decision threshold chosen on validation for a target sensitivity, and bootstrap CIs."""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from scipy.stats import beta
from torchmetrics.functional.classification import binary_auroc, binary_recall, binary_specificity

from lesion.stats.metrics import partial_auroc

log = logging.getLogger(__name__)
# A case is called malignant when P(malignant) > threshold (torchmetrics' convention).


METHODS = ("point", "lower_bound")


def threshold_for_sensitivity(p_malignant: torch.Tensor, target: torch.Tensor, sensitivity: float = 0.8) -> float:
    """The highest threshold whose sensitivity on these scores is at least `sensitivity` (the `point` rule)."""
    positives = _positive_scores(p_malignant, target)
    return _threshold_detecting(p_malignant, positives, max(1, math.ceil(sensitivity * len(positives) - 1e-9)))


def sensitivity_lower_bound(detected: int, positives: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson lower confidence bound on a sensitivity measured as detected / positives."""
    if detected <= 0:
        return 0.0
    return float(beta.ppf(1 - confidence, detected, positives - detected + 1))


def choose_operating_point(
    p_malignant: torch.Tensor,
    target: torch.Tensor,
    sensitivity: float = 0.8,
    method: str = "lower_bound",
    confidence: float = 0.95,
) -> dict:
    """The decision threshold for a target sensitivity, chosen on validation scores.

    point: the highest threshold whose val sensitivity reaches the target; on new data it then falls short about half
    the time. lower_bound: the highest threshold whose one-sided Clopper-Pearson lower bound on sensitivity (level
    `confidence`, from the val positives) reaches the target, so new data from the same distribution keeps the target
    with at least that probability. With too few val positives for any threshold to certify the target, every val
    positive is detected and the bound reached is reported (with a warning).
    """
    if method not in METHODS:
        raise ValueError(f"operating_point.method must be one of {METHODS}, got {method!r}")
    positives = _positive_scores(p_malignant, target)
    n = len(positives)
    if method == "point":
        needed = max(1, math.ceil(sensitivity * n - 1e-9))
    else:
        bounds = beta.ppf(1 - confidence, np.arange(1, n + 1), n - np.arange(1, n + 1) + 1)
        reaching = np.nonzero(bounds >= sensitivity)[0]
        needed = int(reaching[0]) + 1 if len(reaching) else n
        if not len(reaching):
            log.warning(
                "%d malignant val images cannot certify sensitivity %.2f at %.0f%% confidence (detecting all of them "
                "certifies %.3f): the threshold detects every one; more val positives are needed for the guarantee",
                n, sensitivity, 100 * confidence, bounds[-1],
            )  # fmt: skip
    return {
        "threshold": _threshold_detecting(p_malignant, positives, needed),
        "method": method,
        "confidence": confidence if method == "lower_bound" else None,
        "target_sensitivity": sensitivity,
        "val_positives": n,
        "val_detected": needed,
        "sensitivity_lower_bound": sensitivity_lower_bound(needed, n, confidence),
    }


def _positive_scores(p_malignant: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p, y = p_malignant.detach().double().flatten(), target.detach().flatten().bool()
    if not y.any():
        raise ValueError("cannot choose a threshold for a target sensitivity: no malignant cases in this split")
    return torch.sort(p[y], descending=True).values


def _threshold_detecting(p_malignant: torch.Tensor, positives: torch.Tensor, k: int) -> float:
    """Halfway between the k-th highest malignant score and the next lower score of any case, so the decisions on
    these scores are exactly those of the highest threshold that detects k malignant cases.

    `p > threshold` is decided in the scores' own precision (float32 scores against a float64 threshold compare in
    float32): the threshold is a value of that precision, below the k-th score, so no rounding moves it onto it."""
    p = p_malignant.detach().double().flatten()
    kth = positives[k - 1]
    below = p[p < kth]
    lower = below.max() if len(below) else kth - 1e-6
    dtype = p_malignant.dtype if p_malignant.is_floating_point() else torch.float64
    threshold, kth = torch.tensor(float((kth + lower) / 2), dtype=dtype), torch.tensor(float(kth), dtype=dtype)
    if threshold >= kth:  # adjacent scores: the midpoint rounds onto the k-th one
        threshold = torch.nextafter(kth, torch.tensor(-math.inf, dtype=dtype))
    if threshold < 0:  # the k-th score is 0 (a collapsed model): no probability threshold detects it
        log.warning("the malignant score to detect is 0: the threshold is 0, which detects only scores above it")
        return 0.0
    return float(threshold)


def bootstrap_ci(
    p_malignant: torch.Tensor,
    target: torch.Tensor,
    threshold: float,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap CIs for AUROC, pAUC80, sensitivity and specificity at `threshold`.

    Resampling is stratified by class (positives and negatives resampled separately), so every resample has both.
    """
    p, y = p_malignant.detach().float().flatten(), target.detach().flatten().long()
    pos, neg = torch.nonzero(y == 1).flatten(), torch.nonzero(y == 0).flatten()
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("bootstrap CIs need both malignant and benign cases")
    generator = torch.Generator().manual_seed(seed)
    values: dict[str, list[float]] = {"auroc": [], "pauc80": [], "recall": [], "specificity": []}
    for _ in range(resamples):
        idx = torch.cat(
            [
                pos[torch.randint(len(pos), (len(pos),), generator=generator)],
                neg[torch.randint(len(neg), (len(neg),), generator=generator)],
            ]
        )
        ps, ys = p[idx], y[idx]
        values["auroc"].append(float(binary_auroc(ps, ys)))
        values["pauc80"].append(float(partial_auroc(ps, ys)))
        values["recall"].append(float(binary_recall(ps, ys, threshold=threshold)))
        values["specificity"].append(float(binary_specificity(ps, ys, threshold=threshold)))
    tail = (1 - level) / 2 * 100
    return {k: tuple(np.percentile(v, [tail, 100 - tail]).tolist()) for k, v in values.items()}


def balanced_accuracy_ci(
    predicted: torch.Tensor, labels: torch.Tensor, resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of balanced accuracy (the mean over classes of per-class recall) of a multiclass
    decision. Resampling is stratified by class, as `bootstrap_ci`'s: each class keeps its support in every resample,
    so rare classes (17 DF images in a test split) are never dropped from the mean."""
    correct, labels = (predicted.flatten() == labels.flatten()).float(), labels.flatten()
    generator = torch.Generator().manual_seed(seed)
    recalls = []
    for c in labels.unique().tolist():
        hits = correct[labels == c]
        recalls.append(hits[torch.randint(len(hits), (resamples, len(hits)), generator=generator)].mean(1))
    values = torch.stack(recalls).mean(0).numpy()
    tail = (1 - level) / 2 * 100
    return tuple(np.percentile(values, [tail, 100 - tail]).tolist())
