"""Screening metrics: one collection for every split, on P(malignant) against the malignant label."""

from __future__ import annotations

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryF1Score,
    BinaryPrecision,
    BinaryRecall,
    BinarySpecificity,
    BinaryStatScores,
    MulticlassAccuracy,
)
from torchmetrics.functional.classification import binary_roc
from torchmetrics.utilities import dim_zero_cat


def partial_auroc(scores: torch.Tensor, target: torch.Tensor, min_tpr: float = 0.8) -> torch.Tensor:
    """Area under the ROC above `min_tpr` sensitivity, as the ISIC 2024 challenge scores it (range 0 to 1-min_tpr).

    Labels and scores are flipped, the ROC is cut at FPR = 1 - min_tpr with linear interpolation, and the area is
    not rescaled (ISIC 2024 Kaggle metric, "pAUC above 80% TPR").
    """
    scores, target = scores.detach().flatten().double(), target.detach().flatten().long()
    if target.min() == target.max():
        return torch.tensor(float("nan"), dtype=torch.float64)
    max_fpr = 1.0 - min_tpr
    fpr, tpr, _ = binary_roc(1.0 - scores, 1 - target, thresholds=None)
    fpr, tpr = fpr.double(), tpr.double()
    stop = int(torch.searchsorted(fpr, torch.tensor([max_fpr], dtype=fpr.dtype), right=True))
    x0, x1, y0, y1 = fpr[stop - 1], fpr[stop], tpr[stop - 1], tpr[stop]
    cut = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
    fpr = torch.cat([fpr[:stop], fpr.new_tensor([max_fpr])])
    tpr = torch.cat([tpr[:stop], cut.reshape(1)])
    return torch.trapezoid(tpr, fpr)


class PartialAUROC(Metric):
    """`partial_auroc` accumulated over batches (and synced across processes)."""

    higher_is_better = True
    full_state_update = False

    def __init__(self, min_tpr: float = 0.8, **kwargs):
        super().__init__(**kwargs)
        self.min_tpr = min_tpr
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")

    def update(self, scores: torch.Tensor, target: torch.Tensor) -> None:
        self.scores.append(scores.detach().flatten().float())
        self.target.append(target.detach().flatten().long())

    def compute(self) -> torch.Tensor:
        return partial_auroc(dim_zero_cat(self.scores), dim_zero_cat(self.target), self.min_tpr).float()


def screening_collection(threshold: float = 0.5) -> MetricCollection:
    """Scalar benign-vs-malignant metrics, fed with (P(malignant), malignant label)."""
    return MetricCollection(
        {
            "accuracy": BinaryAccuracy(threshold=threshold),
            "precision": BinaryPrecision(threshold=threshold),
            "recall": BinaryRecall(threshold=threshold),
            "specificity": BinarySpecificity(threshold=threshold),
            "f1": BinaryF1Score(threshold=threshold),
            "auroc": BinaryAUROC(),
            "pauc80": PartialAUROC(min_tpr=0.8),
        }
    )


def diagnosis_collection(num_classes: int) -> MetricCollection:
    """Multiclass metrics, fed with (class probabilities, class index). Balanced accuracy ranks ISIC 2018 Task 3."""
    return MetricCollection({"balanced_accuracy": MulticlassAccuracy(num_classes, average="macro")})


def confusion_counts(p_malignant: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> dict[str, int]:
    tp, fp, tn, fn, _ = BinaryStatScores(threshold=threshold)(p_malignant, target.long()).tolist()
    return {"tp": tp, "fn": fn, "fp": fp, "tn": tn}


def screening_metrics(p_malignant: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> dict[str, float]:
    """Every screening metric, and the confusion counts, for one set of predictions."""
    target = target.long()
    values = {k: float(v) for k, v in screening_collection(threshold)(p_malignant, target).items()}
    return values | confusion_counts(p_malignant, target, threshold)
