"""Screening metrics: the study's confusion matrix, ISIC 2024 pAUC against a NumPy reference, multiclass balance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lesion.stats.metrics import PartialAUROC, diagnosis_collection, partial_auroc, screening_metrics


def study_predictions() -> tuple[torch.Tensor, torch.Tensor]:
    """The study's test confusion matrix: TP 53, FN 21, FP 91, TN 686."""
    target = torch.tensor([1] * 74 + [0] * 777)
    p = torch.tensor([0.9] * 53 + [0.1] * 21 + [0.9] * 91 + [0.1] * 686)
    return p, target


def test_study_confusion_matrix_gives_the_right_metrics():
    m = screening_metrics(*study_predictions())
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (53, 21, 91, 686)
    assert m["recall"] == pytest.approx(0.716, abs=5e-4)
    assert m["specificity"] == pytest.approx(0.883, abs=5e-4)
    assert m["precision"] == pytest.approx(0.368, abs=5e-4)
    assert m["f1"] == pytest.approx(0.486, abs=5e-4)
    assert m["accuracy"] == pytest.approx(0.868, abs=5e-4)


def numpy_pauc(y: np.ndarray, p: np.ndarray, min_tpr: float = 0.8) -> float:
    """Direct transcription of the ISIC 2024 scoring: flip, ROC over every distinct threshold, cut, trapezoid."""
    y, s = 1 - y, 1.0 - p
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    distinct = np.r_[np.where(np.diff(s))[0], len(s) - 1]
    tps, fps = np.cumsum(y)[distinct], (1 + distinct) - np.cumsum(y)[distinct]
    tpr, fpr = np.r_[0, tps / tps[-1]], np.r_[0, fps / fps[-1]]
    max_fpr = 1 - min_tpr
    stop = np.searchsorted(fpr, max_fpr, "right")
    cut = np.interp(max_fpr, [fpr[stop - 1], fpr[stop]], [tpr[stop - 1], tpr[stop]])
    x, yy = np.append(fpr[:stop], max_fpr), np.append(tpr[:stop], cut)
    return float(np.sum(np.diff(x) * (yy[1:] + yy[:-1]) / 2))


@pytest.mark.parametrize("seed", range(5))
def test_pauc_matches_numpy_reference_on_random_data(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1).round(2)  # rounding makes ties, as real scores have
    expected = numpy_pauc(y, p)
    assert float(partial_auroc(torch.tensor(p), torch.tensor(y))) == pytest.approx(expected, abs=1e-6)
    assert 0 <= expected <= 0.2


def test_pauc_extremes_and_batched_metric():
    y = torch.tensor([0, 0, 1, 1])
    assert float(partial_auroc(torch.tensor([0.1, 0.2, 0.8, 0.9]), y)) == pytest.approx(0.2)
    assert float(partial_auroc(torch.tensor([0.9, 0.8, 0.2, 0.1]), y)) == pytest.approx(0.0)
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 2, 200), rng.random(200)
    metric = PartialAUROC()
    for chunk in np.array_split(np.arange(200), 7):
        metric.update(torch.tensor(p[chunk]), torch.tensor(y[chunk]))
    assert float(metric.compute()) == pytest.approx(numpy_pauc(y, p), abs=1e-6)


def test_balanced_accuracy_is_mean_per_class_recall():
    target = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    pred = torch.tensor([0, 0, 0, 1, 1, 1, 0])
    probs = torch.nn.functional.one_hot(pred, 3).float()
    value = diagnosis_collection(3)(probs, target)["balanced_accuracy"]
    assert float(value) == pytest.approx((3 / 4 + 2 / 2 + 0 / 1) / 3)
