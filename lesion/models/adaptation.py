"""Adapting a trained network to a site's labelled photos: which weights move (a strategy), BatchNorm statistics
re-estimated on local images, and a few epochs of fine-tuning on P(malignant) with an optional L2-SP penalty."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


@dataclass
class Strategy:
    """conf/strategy/<name>.yaml. train: prefixes of the evaluation network's parameter names that fine-tuning moves
    ([] none, ["*"] all); bn_stats: re-estimate BatchNorm statistics on the local training photos first (no labels);
    l2sp: alpha of the L2-SP penalty, alpha/2 ||w - w_source||^2 over every trained weight (Li et al., ICML 2018),
    which replaces weight decay; max_epochs: the longest fine-tuning the local folds may choose."""

    name: str
    train: list[str] = field(default_factory=list)
    bn_stats: bool = False
    l2sp: float = 0.0
    lr: float = 1e-4
    weight_decay: float = 0.0
    max_epochs: int = 0
    batch_size: int = 16

    @property
    def fine_tunes(self) -> bool:
        return bool(self.train) and self.max_epochs > 0


def trained_parameters(net: nn.Module, prefixes: list[str]) -> dict[str, nn.Parameter]:
    """The parameters of `net` whose names start with one of `prefixes` ("*": all); a prefix that names nothing is an
    error listing the network's top-level modules."""
    named = dict(net.named_parameters())
    if "*" in prefixes:
        return named
    chosen = {n: p for n, p in named.items() if any(n == q or n.startswith(q + ".") for q in prefixes)}
    unused = [q for q in prefixes if not any(n == q or n.startswith(q + ".") for n in named)]
    if unused:
        top = sorted({n.split(".")[0] for n in named})
        raise ValueError(f"strategy.train names {unused}, which are not parameters of the network; its modules: {top}")
    return chosen


@torch.no_grad()
def reestimate_batchnorm(net: nn.Module, batches: list[torch.Tensor]) -> int:
    """BatchNorm running means and variances recomputed as plain averages over `batches` (the site's photos, through
    the evaluation transforms; AdaBN, Li et al. 2016); every other layer stays in eval mode. Returns the layers
    reset."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over every batch
        m.train()
    for batch in batches:
        net(batch)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
        m.eval()
    return len(norms)


def malignant_log_probabilities(logits: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log P(malignant) and log P(benign) from class logits: the malignant classes' softmax mass, in log space."""
    total = torch.logsumexp(logits, dim=-1)
    return torch.logsumexp(logits[:, mask], -1) - total, torch.logsumexp(logits[:, ~mask], -1) - total


def fine_tune(
    net: nn.Module,
    mask: torch.Tensor,
    images: Callable[[np.ndarray, int], torch.Tensor],
    y: np.ndarray,
    strategy: Strategy,
    epochs: int,
    seed: int = 0,
    after_epoch: Callable[[int], None] | None = None,
    channels_last: bool = False,
) -> list[float]:
    """Fine-tune `net` in place for `epochs` on the site's benign/malignant labels `y`, through the binary
    cross-entropy of P(malignant) (the score the site's threshold is certified on), malignant photos weighted by the
    benign:malignant ratio. `images(rows, seed)` gives an augmented batch of those rows. BatchNorm statistics and
    dropout stay as they are (eval mode): a few dozen photos per batch would only add noise to them. Returns the
    mean loss of each epoch; `after_epoch(epoch)` runs after each (the folds score there)."""
    params = trained_parameters(net, strategy.train)
    for p in net.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    source = {n: p.detach().clone() for n, p in params.items()} if strategy.l2sp else {}
    weight_decay = 0.0 if strategy.l2sp else strategy.weight_decay
    optimizer = torch.optim.AdamW(params.values(), lr=strategy.lr, weight_decay=weight_decay)
    target = torch.as_tensor(y, dtype=torch.float32)
    positive = float(max(target.sum(), 1))
    weight_pos = float(len(target) - positive) / positive
    losses = []
    net.eval()
    for epoch in range(epochs):
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(target))
        total = 0.0
        for start in tqdm(range(0, len(order), strategy.batch_size), desc=f"fine-tune epoch {epoch}", leave=False):
            rows = order[start : start + strategy.batch_size]
            x = images(rows, int(rng.integers(2**31)))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            log_mal, log_ben = malignant_log_probabilities(net(x).float(), mask)
            t = target[rows]
            w = t * weight_pos + (1 - t)
            loss = -(w * (t * log_mal + (1 - t) * log_ben)).sum() / w.sum()
            if source:
                loss = loss + strategy.l2sp / 2 * sum(((params[n] - w0) ** 2).sum() for n, w0 in source.items())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(rows)
        losses.append(total / len(target))
        if after_epoch is not None:
            after_epoch(epoch + 1)
    for p in net.parameters():
        p.requires_grad_(False)
    return losses
