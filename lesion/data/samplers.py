"""Training samplers for class imbalance: class-balanced, and negatives undersampled afresh every epoch."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler, WeightedRandomSampler


def balanced_sampler(labels: np.ndarray, seed: int) -> WeightedRandomSampler:
    """Draws every class equally often (with replacement), one epoch = as many draws as images."""
    counts = np.bincount(labels)
    weights = 1.0 / counts[labels]
    generator = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), len(labels), generator=generator)


class UndersampleSampler(Sampler[int]):
    """Every positive, plus `neg_ratio` negatives per positive drawn afresh each epoch (top ISIC 2024 entries)."""

    def __init__(self, positive: np.ndarray, neg_ratio: float, seed: int = 0):
        self.positives = np.flatnonzero(positive)
        self.negatives = np.flatnonzero(~positive.astype(bool))
        if len(self.positives) == 0:
            raise ValueError("data.neg_ratio needs malignant images in the training split, and it has none")
        self.num_negatives = min(len(self.negatives), int(round(neg_ratio * len(self.positives))))
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.positives) + self.num_negatives

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        chosen = rng.choice(self.negatives, self.num_negatives, replace=False)
        order = np.concatenate([self.positives, chosen])
        rng.shuffle(order)
        return iter(order.tolist())
