"""A frozen prefix's activations computed once: when backbone.freeze covers the stem and the first blocks, their output
is cached (frozen BatchNorm, no dropout, so exact), and training runs only the rest of the network on it."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import lightning as L
import numpy as np
import torch
from timm.models.efficientnet import EfficientNet
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from lesion.data.datamodule import collate
from lesion.data.samplers import EpochSampler

log = logging.getLogger(__name__)


def prefix_depth(net: nn.Module, freeze: Sequence[str]) -> int:
    """How many blocks a frozen prefix covers: freeze = [conv_stem, bn1, blocks.0, ..., blocks.{k-1}] gives k."""
    if not isinstance(net, EfficientNet):
        raise ValueError(
            f"activation_cache supports timm's EfficientNet family (efficientnet_lite*, efficientnet_b0), not "
            f"{type(net).__name__}; set activation_cache.enabled=false"
        )
    names = list(freeze)
    expected = ["conv_stem", "bn1"] + [f"blocks.{i}" for i in range(max(len(names) - 2, 0))]
    if len(names) < 2 or names != expected or len(names) - 2 >= len(net.blocks):
        raise ValueError(
            f"activation_cache needs backbone.freeze to be a prefix of the network, like "
            f"[conv_stem, bn1, blocks.0, blocks.1]; got {names}"
        )
    return len(names) - 2


def run_prefix(net: EfficientNet, images: torch.Tensor, depth: int) -> torch.Tensor:
    return net.blocks[:depth](net.bn1(net.conv_stem(images)))


def run_suffix(net: EfficientNet, features: torch.Tensor, depth: int) -> torch.Tensor:
    """The rest of EfficientNet.forward after `run_prefix`: logits."""
    return net.forward_head(net.bn2(net.conv_head(net.blocks[depth:](features))))


class CachedActivations(Dataset):
    """Cached activations [views, N, C, H, W] -> {"features", "label", "image_id"}; an EpochSampler's (index, seed,
    epoch) picks view seed % views, so each epoch draws one augmented view per image."""

    def __init__(self, views: torch.Tensor, labels: np.ndarray, image_ids: np.ndarray):
        self.views, self.labels, self.image_ids = views, labels, image_ids

    def __len__(self) -> int:
        return self.views.shape[1]

    def __getitem__(self, key: int | tuple[int, int, int]) -> dict:
        index, seed = key[:2] if isinstance(key, tuple) else (key, 0)
        features = self.views[seed % self.views.shape[0], index].float()
        return {"features": features, "label": int(self.labels[index]), "image_id": str(self.image_ids[index])}


class ActivationCache(L.LightningDataModule):
    """Wraps a LesionDataModule: val/test activations once, `views` augmented views of each training image, all in
    memory as `dtype`. Anything else (splits, class counts, reader) is the wrapped datamodule's."""

    def __init__(self, datamodule, model, views: int = 4, dtype: str = "float16"):
        super().__init__()
        if views < 1:
            raise ValueError(f"activation_cache.views must be at least 1, got {views}")
        if datamodule.sampler or datamodule.neg_ratio or datamodule.on_bad_image != "error":
            raise ValueError("activation_cache needs data.sampler=null, data.neg_ratio=null, data.on_bad_image=error")
        if datamodule.train_sizes:
            raise ValueError("activation_cache caches one input size and cannot follow data.train_sizes: use one")
        if not isinstance(getattr(torch, str(dtype), None), torch.dtype):
            raise ValueError(f"activation_cache.dtype must be a torch dtype name such as float16, got {dtype!r}")
        self.inner, self.model, self.views, self.dtype = datamodule, model, views, getattr(torch, dtype)
        if not model.hparams.backbone.get("freeze_bn_stats", True):
            raise ValueError(
                "activation_cache needs the frozen prefix to compute the same activations every epoch, and "
                "backbone.freeze_bn_stats=false lets its BatchNorm statistics move: set backbone.freeze_bn_stats=true "
                "or activation_cache.enabled=false"
            )
        self.depth = prefix_depth(model.net, model.hparams.backbone.get("freeze") or ())
        model.prefix_depth = self.depth
        self.sets: dict[str, CachedActivations] = {}

    def __getattr__(self, name: str):
        if name in ("inner", "sets") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def setup(self, stage: str | None = None) -> None:
        if self.sets:
            return
        self.inner.setup(stage)
        rng = np.random.default_rng([self.inner.seed, 7919])
        for split in ("train", "val"):  # test is cached on first use: train.py tests on images (TTA)
            dataset = self.inner.dataset(split, train=split == "train")
            n = len(dataset)
            views = self.views if split == "train" else 1
            keys = [(i, int(s)) for _ in range(views) for i, s in zip(range(n), rng.integers(0, 2**32, n))]
            store = self._compute(dataset, keys if split == "train" else list(range(n)), f"caching {split}")
            self.sets[split] = CachedActivations(
                store.view(views, n, *store.shape[1:]), dataset.labels, dataset.image_ids
            )
        size = sum(s.views.numel() * s.views.element_size() for s in self.sets.values())  # train + val
        log.info(
            "activation cache: blocks 0-%d frozen, %d training views, %.2f GB", self.depth - 1, self.views, size / 1e9
        )

    def describe(self) -> dict:
        return self.inner.describe() | {"activation_cache": {"views": self.views, "after_blocks": self.depth}}

    @torch.no_grad()
    def _compute(self, dataset: Dataset, keys: list, desc: str) -> torch.Tensor:
        net, channels_last = self.model.net, self.model.hparams.channels_last
        loader = DataLoader(
            dataset, self.inner.eval_batch_size, sampler=keys, num_workers=self.inner.num_workers, collate_fn=collate
        )
        out, was_training = [], net.training
        net.eval()  # frozen modules behave the same in both modes; eval makes that hold for any other layer too
        for batch in tqdm(loader, desc=desc, unit="batch"):
            images = batch["image"]
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            out.append(run_prefix(net, images, self.depth).to(self.dtype).contiguous())
        net.train(was_training)
        return torch.cat(out)

    def train_dataloader(self) -> DataLoader:
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        sampler = EpochSampler(len(self.sets["train"]), self.inner.seed, epoch)
        return DataLoader(self.sets["train"], self.inner.batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.sets["val"], self.inner.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        if "test" not in self.sets:
            dataset = self.inner.dataset("test")
            store = self._compute(dataset, list(range(len(dataset))), "caching test")
            self.sets["test"] = CachedActivations(store[None], dataset.labels, dataset.image_ids)
        return DataLoader(self.sets["test"], self.inner.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
