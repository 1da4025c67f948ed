"""LAuReL: identity at initialisation, the parameter-count formula, and only the trained stages wrapped."""

from __future__ import annotations

import pytest
import torch
from test_backbones import backbone_cfg
from timm.models.resnet import BasicBlock, Bottleneck

from lesion.models.backbones import build_backbone
from lesion.models.laurel import Laurel, laurel_parameter_count

VARIANTS = ["rw", "lr", "rw_lr"]


def _count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _pair(name: str, tmp_path, variant: str, **overrides) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The plain network and the LAuReL one carrying the same (random) weights."""
    plain = build_backbone(**backbone_cfg(name, tmp_path, **overrides), num_classes=2).eval()
    wrapped = build_backbone(**backbone_cfg(name, tmp_path, laurel=variant, **overrides), num_classes=2).eval()
    missing, unexpected = wrapped.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected, "LAuReL must keep every original parameter name, so pretrained weights still load"
    assert missing and all(".laurel." in k for k in missing)
    return plain, wrapped


@pytest.mark.parametrize("variant", VARIANTS)
def test_laurel_computes_exactly_the_original_function_at_init(variant, tmp_path):
    plain, wrapped = _pair("resnet50_trunc", tmp_path, variant)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(plain(x), wrapped(x))


def test_laurel_is_identity_at_init_on_basic_blocks_too(tmp_path):
    plain, wrapped = _pair("resnet50", tmp_path, "rw_lr", model_name="resnet18")
    assert any(isinstance(m, BasicBlock) and hasattr(m, "laurel") for m in wrapped.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(plain(x), wrapped(x))


@pytest.mark.parametrize(("variant", "added"), [("rw", 12), ("lr", 196_608), ("rw_lr", 196_620)])
def test_laurel_adds_the_parameters_of_the_formula(variant, added, tmp_path):
    plain, wrapped = _pair("resnet50_trunc", tmp_path, variant)
    # resnet50_trunc trains layer3 only: 6 bottlenecks of 1024 output channels; rank 16.
    assert laurel_parameter_count([1024] * 6, variant, rank=16) == added
    assert _count(wrapped) - _count(plain) == added


def test_laurel_rank_is_configurable(tmp_path):
    plain, wrapped = _pair("resnet50_trunc", tmp_path, "lr", laurel_rank=4)
    assert _count(wrapped) - _count(plain) == laurel_parameter_count([1024] * 6, "lr", rank=4) == 6 * 2 * 1024 * 4


def test_laurel_wraps_only_the_trained_stages(tmp_path):
    _, wrapped = _pair("resnet50_trunc", tmp_path, "rw")
    trunk = wrapped.trunk
    for stage in ("layer1", "layer2"):  # frozen in resnet50_trunc
        assert all(not hasattr(b, "laurel") for b in getattr(trunk, stage))
    assert all(isinstance(b.laurel, Laurel) for b in trunk.layer3)
    assert all(isinstance(b, Bottleneck) for b in trunk.layer3)


def test_laurel_parameters_learn(tmp_path):
    _, wrapped = _pair("resnet50_trunc", tmp_path, "rw_lr")
    for block in wrapped.trunk.layer3:  # timm zero-initialises the last BN of each block, as pretraining does not
        torch.nn.init.ones_(block.bn3.weight)
    wrapped.train()
    wrapped(torch.randn(2, 3, 64, 64)).sum().backward()
    laurel = wrapped.trunk.layer3[0].laurel
    for p in (laurel.alpha, laurel.beta, laurel.up.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0  # B starts at zero but still gets a gradient


def test_laurel_on_a_non_resnet_or_an_unknown_variant_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="ResNet family"):
        build_backbone(**backbone_cfg("efficientnet_b0", tmp_path, laurel="rw"), num_classes=2)
    with pytest.raises(ValueError, match="backbone.laurel must be one of"):
        build_backbone(**backbone_cfg("resnet50_trunc", tmp_path, laurel="rw2"), num_classes=2)
    with pytest.raises(ValueError, match="laurel_rank"):
        build_backbone(**backbone_cfg("resnet50_trunc", tmp_path, laurel="lr", laurel_rank=0), num_classes=2)
