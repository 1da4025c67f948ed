"""Training samplers whose order and per-image augmentation seeds are a pure function of (seed, epoch).

They yield (index, augmentation seed, epoch) keys, so an epoch is the same whether it runs after the previous one, in a
resumed process, in a persistent worker or a fresh one (the epoch tells a dataset which training size it is at, under
`data.train_sizes`). Variants: shuffle, drawn with given
probabilities (class-balanced, or per-source shares), and negatives undersampled afresh every epoch.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class EpochSampler(Sampler[tuple[int, int, int]]):
    """Every image once per epoch, in an order drawn from (seed, epoch)."""

    def __init__(self, num_images: int, seed: int = 0, start_epoch: int = 0):
        self.num_images, self.seed, self.epoch = num_images, seed, start_epoch

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this before each epoch; without it, each pass counts one epoch on."""
        self.epoch = epoch

    def order(self, rng: np.random.Generator) -> np.ndarray:
        return rng.permutation(self.num_images)

    def __len__(self) -> int:
        return self.num_images

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        epoch = self.epoch
        rng = np.random.default_rng([self.seed, epoch])
        order = self.order(rng)
        seeds = rng.integers(0, 2**32, len(order))
        self.epoch += 1
        return ((index, seed, epoch) for index, seed in zip(order.tolist(), seeds.tolist()))


class DrawSampler(EpochSampler):
    """Draws image i with probability p[i] (with replacement); an epoch is as many draws as images."""

    def __init__(self, p: np.ndarray, seed: int = 0, start_epoch: int = 0):
        super().__init__(len(p), seed, start_epoch)
        self.p = np.asarray(p, float) / np.sum(p)

    def order(self, rng: np.random.Generator) -> np.ndarray:
        return rng.choice(self.num_images, self.num_images, replace=True, p=self.p)


class BalancedSampler(DrawSampler):
    """Draws every class equally often (with replacement); an epoch is as many draws as images."""

    def __init__(self, labels: np.ndarray, seed: int = 0, start_epoch: int = 0):
        super().__init__(1.0 / np.bincount(labels)[labels], seed, start_epoch)


class UndersampleSampler(EpochSampler):
    """Every positive, plus `neg_ratio` negatives per positive drawn afresh each epoch (top ISIC 2024 entries)."""

    def __init__(self, positive: np.ndarray, neg_ratio: float, seed: int = 0, start_epoch: int = 0):
        self.positives = np.flatnonzero(positive)
        self.negatives = np.flatnonzero(~positive.astype(bool))
        if len(self.positives) == 0:
            raise ValueError("data.neg_ratio needs malignant images in the training split, and it has none")
        self.num_negatives = min(len(self.negatives), int(round(neg_ratio * len(self.positives))))
        super().__init__(len(self.positives) + self.num_negatives, seed, start_epoch)

    def order(self, rng: np.random.Generator) -> np.ndarray:
        chosen = rng.choice(self.negatives, self.num_negatives, replace=False)
        order = np.concatenate([self.positives, chosen])
        rng.shuffle(order)
        return order
