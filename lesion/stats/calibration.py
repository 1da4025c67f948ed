"""Calibration: temperature scaling of the class logits and Platt scaling of P(malignant), fitted on validation, and
NLL / Brier / ECE to judge them (of calibrated P(malignant), the screening score; top-label multiclass figures too)."""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)
# A model whose val NLL wants T beyond these bounds has scores with next to no calibrated signal: an unbounded T
# (thousands) squeezes every float32 probability to the prior's neighbourhood, ties the scores, and destroys the
# ranking that AUROC and the threshold rely on.
TEMPERATURE_BOUNDS = (0.05, 20.0)


def _minimise(start: torch.Tensor, loss, max_iter: int) -> torch.Tensor:
    """L-BFGS (strong Wolfe line search) on `loss(params)` from `start`: the fitted parameters, detached."""
    params = start.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([params], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        value = loss(params)
        value.backward()
        return value

    optimizer.step(closure)
    return params.detach()


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 200) -> float:
    """The temperature T > 0 minimising the NLL of softmax(logits / T) (Guo et al., ICML 2017), kept within
    TEMPERATURE_BOUNDS (with a warning when a bound is hit)."""
    logits, labels = logits.detach().double(), labels.detach().long()
    log_t = _minimise(
        torch.zeros(1, dtype=torch.float64), lambda t: F.cross_entropy(logits / t.exp(), labels), max_iter
    )
    fitted = float(log_t.detach().exp())
    low, high = TEMPERATURE_BOUNDS
    if not math.isfinite(fitted) or not low <= fitted <= high:
        bounded = high if not math.isfinite(fitted) or fitted > high else low
        log.warning(
            "temperature scaling wanted T = %.4g, outside %s; using %.4g. The model's scores carry little calibrated "
            "signal on this validation split: check its training before trusting its probabilities",
            fitted, TEMPERATURE_BOUNDS, bounded,
        )  # fmt: skip
        return bounded
    return fitted


PLATT_IDENTITY = (1.0, 0.0)
_EPS = 1e-12


def fit_platt(p: torch.Tensor, y: torch.Tensor, max_iter: int = 200) -> tuple[float, float]:
    """Platt scaling of a probability (Platt, 1999): (a, b) minimising the binary NLL of sigmoid(a logit(p) + b)
    against y. With a > 0 it keeps the ranking of p, so AUROC and the images beyond any threshold are unchanged."""
    z = torch.logit(p.detach().double().clamp(_EPS, 1 - _EPS))
    y = y.detach().double()
    params = _minimise(
        torch.tensor(PLATT_IDENTITY, dtype=torch.float64),
        lambda ab: F.binary_cross_entropy_with_logits(ab[0] * z + ab[1], y),
        max_iter,
    )
    a, b = (float(v) for v in params.detach())
    if not (math.isfinite(a) and math.isfinite(b)) or a <= 0:
        log.warning(
            "Platt scaling found no increasing map (a = %.4g, b = %.4g): P(malignant) is left as the temperature made "
            "it. The validation split's scores carry little signal; check the model's training", a, b,
        )  # fmt: skip
        return PLATT_IDENTITY
    return a, b


def platt_scale(p: torch.Tensor, platt: torch.Tensor | tuple[float, float]) -> torch.Tensor:
    """sigmoid(a logit(p) + b), in float64: a steep map pushes confident scores within float32's rounding of 0 and 1,
    and rounding them back would tie them and change the ranking (AUROC) the map promises to keep. The identity map
    (1, 0) returns p itself."""
    a, b = (float(v) for v in platt)
    if (a, b) == PLATT_IDENTITY:
        return p
    z = torch.logit(p.double().clamp(_EPS, 1 - _EPS))
    return torch.sigmoid(a * z + b)


def binary_calibration_scores(p_malignant: torch.Tensor, y_malignant: torch.Tensor, bins: int = 15) -> dict[str, float]:
    """NLL, Brier score and expected calibration error (equal-width bins) of P(malignant) against malignant or not:
    the quantity of the reliability diagram and of every decision."""
    p, y = p_malignant.detach().double().flatten().clamp(1e-12, 1 - 1e-12), y_malignant.detach().double().flatten()
    nll = -(y * p.log() + (1 - y) * (1 - p).log()).mean()
    brier = ((p - y) ** 2).mean()
    return {"nll": float(nll), "brier": float(brier), "ece": _ece(p, y, bins)}


def calibration_scores(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> dict[str, float]:
    """NLL, multiclass Brier score and the top-label expected calibration error (equal-width bins)."""
    probs, labels = probs.detach().double(), labels.detach().long()
    nll = F.nll_loss(probs.clamp_min(1e-12).log(), labels)
    brier = ((probs - F.one_hot(labels, probs.shape[1])) ** 2).sum(dim=1).mean()
    confidence, predicted = probs.max(dim=1)
    return {"nll": float(nll), "brier": float(brier), "ece": _ece(confidence, (predicted == labels).double(), bins)}


def _ece(confidence: torch.Tensor, outcome: torch.Tensor, bins: int) -> float:
    """Sum over equal-width bins of confidence of (share of cases) x |mean confidence - observed rate|."""
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    ece = torch.zeros((), dtype=torch.float64)
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            ece += inside.double().mean() * (confidence[inside].mean() - outcome[inside].mean()).abs()
    return float(ece)
