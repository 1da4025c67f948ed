"""The pooled features of a classifier (or each member of an ensemble): the input of its last nn.Linear."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


def classifier_layers(model: nn.Module) -> list[nn.Linear]:
    """The last nn.Linear of each evaluation network (one per ensemble member): its input is the pooled feature."""
    layers = []
    for member in getattr(model, "members", None) or [model]:
        linears = [m for m in member.eval_net.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(f"{type(member.eval_net).__name__} has no nn.Linear classifier: set quality.ood=energy")
        layers.append(linears[-1])
    return layers


@contextmanager
def captured_features(model: nn.Module) -> Iterator[Callable[[int], torch.Tensor]]:
    """Within the block, the returned function gives the pooled features (members' side by side) of the identity view
    of each batch that went through `model` since the block began: `features(batches=1)`. Every batch runs the same
    views (one, flip TTA's four or dihedral TTA's eight, identity first), so a batch's identity view is the first of its
    passes."""
    layers = classifier_layers(model)
    seen: list[list[torch.Tensor]] = [[] for _ in layers]
    hooks = [
        layer.register_forward_pre_hook(lambda _, args, i=i: seen[i].append(args[0].detach().float().flatten(1)))
        for i, layer in enumerate(layers)
    ]

    def features(batches: int = 1) -> torch.Tensor:
        views, rest = divmod(len(seen[0]), batches)
        if rest or not views:
            raise RuntimeError(f"{len(seen[0])} forward passes do not split into {batches} batches of equal views")
        return torch.cat([torch.cat(s[::views]) for s in seen], dim=1).cpu()

    try:
        yield features
    finally:
        for hook in hooks:
            hook.remove()


@torch.no_grad()
def pooled_features(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """The evaluation networks' pooled features of a normalised batch (no TTA)."""
    device = next(model.parameters()).device
    with captured_features(model) as features:
        for member in getattr(model, "members", None) or [model]:
            net, mode = member.eval_net, member.eval_net.training
            net.eval()(batch.to(device))  # eval-mode BatchNorm, as at inference
            net.train(mode)
        return features()
