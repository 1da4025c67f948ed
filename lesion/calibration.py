"""Calibration: temperature scaling fitted on validation, NLL / Brier / ECE, and the reliability diagram."""

from __future__ import annotations

from pathlib import Path

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


def plot_reliability(p_malignant: dict[str, torch.Tensor], target: torch.Tensor, path: Path, bins: int = 10) -> None:
    """Observed malignant fraction against mean P(malignant) per bin, one line per calibration state."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.4, 4.2))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    edges = torch.linspace(0, 1, bins + 1)
    y = target.float()
    for name, p in p_malignant.items():
        which = torch.bucketize(p.float().clamp(0, 1), edges[1:-1])
        xs, ys = [], []
        for b in range(bins):
            inside = which == b
            if inside.any():
                xs.append(float(p[inside].mean()))
                ys.append(float(y[inside].mean()))
        ax.plot(xs, ys, marker="o", lw=1.5, label=name)
    ax.set_xlabel("mean predicted P(malignant)")
    ax.set_ylabel("observed malignant fraction")
    ax.set_title("Reliability diagram")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
