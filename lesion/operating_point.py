"""The operating point: a decision threshold chosen on validation for a target sensitivity, and bootstrap CIs."""

from __future__ import annotations

import math

import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc, binary_recall, binary_specificity

from lesion.metrics import partial_auroc

# A case is called malignant when P(malignant) > threshold (torchmetrics' convention).


def threshold_for_sensitivity(p_malignant: torch.Tensor, target: torch.Tensor, sensitivity: float = 0.8) -> float:
    """The highest threshold whose sensitivity on these scores is at least `sensitivity`.

    The threshold sits halfway between the k-th highest malignant score (k = ceil(sensitivity x positives)) and the
    next lower score, so the decisions on these scores are exactly those of the best such threshold.
    """
    p, y = p_malignant.detach().double().flatten(), target.detach().flatten().bool()
    positives = torch.sort(p[y], descending=True).values
    if len(positives) == 0:
        raise ValueError("cannot choose a threshold for a target sensitivity: no malignant cases in this split")
    k = max(1, math.ceil(sensitivity * len(positives) - 1e-9))
    kth = positives[k - 1]
    below = p[p < kth]
    lower = below.max() if len(below) else kth - 1e-6
    return float((kth + lower) / 2)


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
