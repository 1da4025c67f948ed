"""Calibration: temperature scaling fitted on validation, and NLL / Brier / ECE to judge it."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 200) -> float:
    """The temperature T > 0 minimising the NLL of softmax(logits / T) (Guo et al., ICML 2017)."""
    logits, labels = logits.detach().double(), labels.detach().long()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


def calibration_scores(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> dict[str, float]:
    """NLL, multiclass Brier score and the top-label expected calibration error (equal-width bins)."""
    probs, labels = probs.detach().double(), labels.detach().long()
    nll = F.nll_loss(probs.clamp_min(1e-12).log(), labels)
    brier = ((probs - F.one_hot(labels, probs.shape[1])) ** 2).sum(dim=1).mean()
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    ece = torch.zeros((), dtype=torch.float64)
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            ece += inside.double().mean() * (confidence[inside].mean() - correct[inside].mean()).abs()
    return {"nll": float(nll), "brier": float(brier), "ece": float(ece)}
