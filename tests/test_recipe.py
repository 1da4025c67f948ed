"""The recipe levers on tiny tensors: optimizer groups, schedules, EMA, mixup and the balanced objectives."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, compose_config

from lesion.models.backbones import build_backbone
from lesion.models.module import LesionClassifier
from lesion.models.optimizers import build_optimizer, build_scheduler
from lesion.models.tta import tta_logits
from train import train

LITE = {"model_name": "tf_efficientnet_lite0", "input_size": 32, "pretrained": False}


def test_adamw_leaves_norms_and_biases_and_frozen_parameters_undecayed():
    net = build_backbone(**LITE, num_classes=3, freeze=["conv_stem", "bn1"], allow_random_frozen=True)
    optimizer = build_optimizer(net, {"opt": "adamw", "lr": 1e-3, "weight_decay": 0.05, "filter_bias_and_bn": True})
    assert isinstance(optimizer, torch.optim.AdamW)
    by_decay = {g["weight_decay"]: g["params"] for g in optimizer.param_groups}
    assert set(by_decay) == {0.0, 0.05}
    assert all(p.ndim > 1 for p in by_decay[0.05]) and all(p.ndim <= 1 for p in by_decay[0.0])
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(trainable) and id(net.conv_stem.weight) not in grouped


def test_layer_decay_scales_the_lr_down_from_the_head():
    net = build_backbone(**LITE, num_classes=3)
    optimizer = build_optimizer(net, {"opt": "adamw", "lr": 1e-3, "weight_decay": 0.05, "layer_decay": 0.5})
    scale = {id(p): g["lr_scale"] for g in optimizer.param_groups for p in g["params"]}
    assert scale[id(net.classifier.weight)] == 1.0
    assert scale[id(net.conv_stem.weight)] < scale[id(net.blocks[3][0].conv_pw.weight)] < 1.0


def test_layer_decay_on_a_cut_trunk_and_unknown_keys_raise():
    net = build_backbone("resnet50", num_classes=2, cut_after="layer3", head="linear", input_size=32)
    with pytest.raises(ValueError, match="layer_decay=null"):
        build_optimizer(net, {"opt": "adamw", "lr": 1e-3, "layer_decay": 0.7})
    with pytest.raises(ValueError, match=r"unknown keys \['learning_rate'\]"):
        build_optimizer(net, {"opt": "adamw", "learning_rate": 1e-3})


def test_warmup_then_cosine_per_step():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    config = {"sched": "cosine", "warmup_epochs": 0.5, "warmup_lr": 0.0, "min_lr": 0.01, "step_on_epochs": False}
    scheduler = build_scheduler(optimizer, config, max_epochs=4, steps_per_epoch=10)
    lrs = []
    for step in range(41):
        scheduler.step_update(num_updates=step)
        lrs.append(optimizer.param_groups[0]["lr"])
    cosine = [0.01 + 0.495 * (1 + math.cos(math.pi * t / 40)) for t in range(41)]  # timm: warmup inside the 40
    assert lrs[0] == 0.0 and lrs[1] == pytest.approx(0.2) and lrs[5:] == pytest.approx(cosine[5:])
    after = lrs[5:]
    assert all(a >= b for a, b in zip(after, after[1:])) and lrs[40] == pytest.approx(0.01, abs=1e-3)
    assert build_scheduler(optimizer, {"sched": None}, 4, 10) is None


def test_ema_follows_the_weights_and_serves_evaluation(tmp_path):
    backbone = LITE | {"freeze": []}
    model = LesionClassifier(backbone=backbone, class_names=["a", "b", "c"], malignant=["c"], ema_decay=0.5)
    assert not any(p.requires_grad for p in model.ema.parameters())
    ema_before = model.ema.module.classifier.weight.clone()
    with torch.no_grad():
        model.net.classifier.weight.add_(1.0)
    model.ema.update(model.net, step=10**6)  # past the warmup: decay 0.5
    expected = 0.5 * ema_before + 0.5 * model.net.classifier.weight
    assert torch.allclose(model.ema.module.classifier.weight, expected)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    assert torch.equal(model(x), model.ema.module.eval()(x)) and model.eval_net is model.ema.module
    model.train()
    assert torch.equal(model(x), model.net(x))


def test_soft_target_loss_matches_weighted_cross_entropy_and_mixup_mixes_pairs():
    model = LesionClassifier(
        backbone=LITE,
        class_names=["a", "b", "c"],
        malignant=["c"],
        class_weights=[1.0, 2.0, 5.0],
        mixup={"mixup_alpha": 0.4, "cutmix_alpha": 0.0, "prob": 1.0},
        label_smoothing=0.1,
    )
    logits, labels = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    one_hot = F.one_hot(labels, 3).float()
    weighted = F.cross_entropy(logits, labels, weight=model.loss_weights)
    assert model._loss(logits, one_hot) == pytest.approx(float(weighted))
    images = torch.randn(6, 3, 8, 8)
    mixed, targets = model.mixup(images.clone(), labels)
    assert torch.allclose(targets.sum(-1), torch.ones(6))
    # Sample 0 (class 0) is mixed with sample 5 (class 2): its target is lam * smooth(0) + (1 - lam) * smooth(2).
    lam = (targets[0, 0] - 0.1 / 3) / (1 - 0.1)
    assert 0.0 < lam < 1.0 and targets[0, 2] == pytest.approx((1 - lam) * 0.9 + 0.1 / 3)
    partner = (mixed - lam * images) / (1 - lam)
    assert torch.allclose(partner, images.flip(0), atol=1e-4)


def test_logit_adjustment_adds_the_scaled_log_prior_inside_the_loss():
    model = LesionClassifier(backbone=LITE, class_names=["a", "b", "c"], malignant=["c"], logit_adjustment=1.0)
    prior = torch.tensor([0.7, 0.2, 0.1])
    model.log_prior.copy_(prior.log())
    logits, labels = torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 0])
    assert model._loss(logits, labels) == pytest.approx(float(F.cross_entropy(logits + prior.log(), labels)))


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> float:
    """The class-weighted cross-entropy of soft targets, written out: sum w_c y_ic (-log p_ic) / sum w_c y_ic."""
    log_p = logits - logits.exp().sum(-1, keepdim=True).log()
    return float(-(weights * targets * log_p).sum() / (weights * targets).sum())


def test_recipe_levers_reach_the_loss_through_train_py(tmp_path):
    overrides = [
        *TINY,
        "data.num_train=9",  # 5 apples, 4 oranges: a prior logit adjustment can see; batches of 4, 4 and 1
        "optimizer=adamw",
        "scheduler=warmup_cosine",
        "trainer.max_epochs=2",
        "model.ema_decay=0.9",
        "model.label_smoothing=0.1",
        "model.logit_adjustment=1.0",
        "model.mixup={mixup_alpha: 0.2, cutmix_alpha: 1.0, prob: 1.0}",
        "data.train_sizes=[[48,48]]",  # epoch 0 at 48x48, epoch 1 at the input size
        "callbacks.extra=[{_target_:spies.LossSpy}]",
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(compose_config("train", overrides, tmp_path))
    spy = torch.load(tmp_path / "spy.pt", weights_only=True)
    # data.train_sizes: epoch 0's batches at 48x48, epoch 1's at the input size (64)
    assert {b["shape"][2:] for b in spy["batches"] if b["epoch"] == 0} == {(48, 48)}
    assert {b["shape"][2:] for b in spy["batches"] if b["epoch"] == 1} == {(64, 64)}
    # logit adjustment: the training split's log prior (5/9, 4/9), added at weight 1.0 inside the loss
    assert spy["logit_adjustment"] == 1.0
    torch.testing.assert_close(spy["log_prior"], torch.tensor([5 / 9, 4 / 9]).log())
    mixed = [c for c in spy["calls"] if len(c["targets"]) == 4]
    single = [c for c in spy["calls"] if len(c["targets"]) == 1]
    assert len(mixed) == 4 and len(single) == 2
    for call in spy["calls"]:  # the loss the module computed is the formula's, on the adjusted logits
        adjusted = call["logits"] + spy["log_prior"]
        assert call["loss"] == pytest.approx(soft_cross_entropy(adjusted, call["targets"], spy["loss_weights"]), 1e-5)
    # mixup / cutmix: soft targets that mix two classes reach the loss (smoothing alone gives 0.95 / 0.05)
    assert any(((c["targets"] > 0.05 + 1e-4).sum(-1) == 2).any() for c in mixed)
    # label smoothing (the odd batch mixup cannot pair): one-hot * 0.9 + 0.1 / 2, scored by the formula above
    for call in single:
        assert call["targets"].ndim == 2 and sorted(call["targets"][0].tolist()) == pytest.approx([0.05, 0.95])
    # the weight EMA's copy is in eval mode on purpose: Lightning's "modules in eval mode" warning is not shown for it
    assert not [w for w in caught if "in eval mode at the start of training" in str(w.message)]
    written = json.loads((tmp_path / "metrics.json").read_text())
    best = LesionClassifier.load_from_checkpoint(written["best_checkpoint"], weights_only=True)
    assert best.ema is not None and bool(best.deployment.calibrated)
    assert best.hparams.optimizer["opt"] == "adamw" and best.hparams.scheduler["step_on_epochs"] is False


def test_shades_of_gray_removes_a_colour_cast_and_is_cached_preprocessing():
    from lesion.data.transforms import LesionTransforms, ShadesOfGray

    rng = np.random.default_rng(0)
    grey = rng.integers(40, 200, (32, 32, 1)).repeat(3, axis=2).astype(np.uint8)
    cast = np.clip(grey * np.array([1.3, 1.0, 0.7]), 0, 255).astype(np.uint8)
    corrected = ShadesOfGray(6.0)(cast).astype(float)
    means = corrected.reshape(-1, 3).mean(0)
    assert np.ptp(means) < 0.03 * means.mean() < np.ptp(cast.reshape(-1, 3).mean(0))
    data_config = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3}
    on = LesionTransforms(data_config, color_constancy=True)
    assert on.preprocess_settings()["color_constancy"] == 6.0
    assert "color_constancy" not in LesionTransforms(data_config).preprocess_settings()  # old cache keys unchanged
    assert np.array_equal(on.preprocess(image=cast)["image"], ShadesOfGray(6.0)(cast))


def test_exported_graph_applies_shades_of_gray_like_training():
    from lesion.serving.export import ScreeningNet

    model = LesionClassifier(backbone=LITE, data={"transforms": {"color_constancy": True}}).eval()
    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    image = np.clip(image * np.array([1.2, 1.0, 0.8]), 0, 255).astype(np.uint8)
    from lesion.models.loading import eval_transforms

    expected = model.eval_net(eval_transforms(model)(image, train=False)[None]).softmax(-1)
    probs, _ = ScreeningNet(model).eval()(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)
    assert torch.allclose(probs, expected, atol=0.02)  # uint8 rounding in training's preprocessing


def test_cached_activations_equal_recomputed_ones_and_give_the_same_logits(tmp_path):
    from lesion.data import build_datamodule
    from lesion.models.activation_cache import ActivationCache, prefix_depth
    from lesion.models.backbones import backbone_data_config

    freeze = ["backbone.freeze=[conv_stem,bn1,blocks.0,blocks.1]", "backbone.pretrained=true"]  # offline weights
    config = compose_config("train", [*TINY, *freeze, "model.channels_last=false"], tmp_path)
    datamodule = build_datamodule(config["data"], backbone_data_config(**config["backbone"]))
    model = LesionClassifier(backbone=config["backbone"], class_names=["apple", "orange"], malignant=["orange"])
    cache = ActivationCache(datamodule, model, views=2, dtype="float32")
    cache.setup("fit")
    assert model.prefix_depth == 2 and cache.sets["train"].views.shape[:2] == (2, 8)
    batch = next(iter(datamodule.val_dataloader()))
    cached = next(iter(cache.val_dataloader()))
    model.eval()
    with torch.no_grad():
        recomputed = model.net.blocks[:2](model.net.bn1(model.net.conv_stem(batch["image"])))
        assert torch.allclose(cached["features"], recomputed, atol=1e-6)
        assert torch.allclose(model._logits(cached), model(batch["image"]), atol=1e-5)
    assert cached["image_id"] == batch["image_id"]
    with pytest.raises(ValueError, match="prefix of the network"):
        prefix_depth(model.net, ["conv_stem", "blocks.0"])
    with pytest.raises(ValueError, match=r"activation_cache\.dtype .* 'half16'"):
        ActivationCache(datamodule, model, views=1, dtype="half16")
    moving = LesionClassifier(
        backbone=config["backbone"] | {"freeze_bn_stats": False}, class_names=["apple", "orange"], malignant=["orange"]
    )
    with pytest.raises(ValueError, match="freeze_bn_stats=false"):
        ActivationCache(datamodule, moving, views=1, dtype="float32")


def test_activation_cache_trains_through_train_py(tmp_path):
    overrides = [
        *TINY,
        "backbone.freeze=[conv_stem,bn1,blocks.0]",
        "backbone.pretrained=true",  # a frozen prefix holds weights (Lite0's ship offline)
        "activation_cache.enabled=true",
        "model.ema_decay=0.9",
    ]
    overrides.append("callbacks.extra=[{_target_:spies.LossSpy}]")
    metrics = train(compose_config("train", overrides, tmp_path))
    assert metrics["epochs"] == 1
    spy = torch.load(tmp_path / "spy.pt", weights_only=True)
    # training read cached activations after blocks.0 (16 channels at 1/2 of 64 px), never images
    assert spy["batches"] and all("features" in b["keys"] and "image" not in b["keys"] for b in spy["batches"])
    assert {b["shape"][1:] for b in spy["batches"]} == {(16, 32, 32)}


def test_input_size_can_be_height_and_width(tmp_path):
    from lesion.models.backbones import backbone_data_config

    assert backbone_data_config("tf_efficientnet_lite0", input_size=[150, 200])["input_size"] == [3, 150, 200]
    with pytest.raises(ValueError, match=r"\[height, width\]"):
        backbone_data_config("tf_efficientnet_lite0", input_size=[150, 200, 3])
    metrics = train(compose_config("train", [*TINY, "backbone.input_size=[48,64]"], tmp_path))
    written = json.loads((tmp_path / "metrics.json").read_text())
    model = LesionClassifier.load_from_checkpoint(written["best_checkpoint"], weights_only=True)
    assert model.data_config["input_size"] == [3, 48, 64] and metrics["train_images"] == 8


@pytest.mark.parametrize("tta", [True, "flip", "dihedral"])
def test_tta_averages_logits_outside_fit_and_reaches_the_exported_graph(tta, tmp_path):
    import onnxruntime as ort

    from lesion.serving.export import ScreeningNet, export_onnx

    backbone = LITE | {"input_size": [24, 32]}  # 3:4: the dihedral views of a non-square image are 4:3
    model = LesionClassifier(backbone=backbone, tta=tta, channels_last=False).eval()
    x = torch.rand(2, 3, 24, 32)
    flips = (lambda v: v, lambda v: v.flip(-1), lambda v: v.flip(-2), lambda v: v.flip(-2, -1))
    turns = (lambda v: v, lambda v: v.transpose(-2, -1)) if tta == "dihedral" else (lambda v: v,)
    with torch.no_grad():
        views = [model.net(flip(turn(x))) for turn in turns for flip in flips]  # 8 distinct views, or 4
        assert len({round(float(v.sum()), 5) for v in views}) == len(views)
        expected = torch.stack(views).mean(0)
        assert torch.allclose(model(x), expected, atol=1e-6) and not torch.allclose(model(x), views[0])
        normalised = (x - 0.5) / 0.5
        probs, _ = ScreeningNet(model).eval()(x)
        assert torch.allclose(probs, model(normalised).softmax(-1), atol=1e-6)
    if tta == "dihedral":  # the transposed views survive export as one graph with a dynamic batch
        session = ort.InferenceSession(str(export_onnx(model, tmp_path / "m.onnx")))
        batch = torch.rand(3, 3, 24, 32)
        onnx_probs = session.run(["probs"], {"image": batch.numpy()})[0]
        with torch.no_grad():
            np.testing.assert_allclose(onnx_probs, model((batch - 0.5) / 0.5).softmax(-1).numpy(), atol=1e-5)


def test_a_wrong_tta_fails_when_the_model_is_built():
    with pytest.raises(ValueError, match="model.tta='rot'.*flip .or true. or dihedral"):
        LesionClassifier(backbone=LITE, tta="rot")


def test_the_test_pass_and_predict_keep_logits_and_features_so_no_split_is_scored_twice():
    import lightning as L
    from torch.utils.data import DataLoader

    from lesion.models.features import pooled_features
    from lesion.screening.predictions import predict, predictions_of

    torch.manual_seed(0)
    classes = {"class_names": ["MEL", "NV", "BCC"], "malignant": ["MEL", "BCC"]}
    model = LesionClassifier(backbone=LITE, tta=True, channels_last=False, **classes)
    rows = [{"image": torch.rand(3, 32, 32), "label": i % 3, "image_id": f"img{i}"} for i in range(10)]
    loader = DataLoader(rows, batch_size=4)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.test(model, dataloaders=loader, verbose=False)
    kept = predictions_of(model.test_outputs, model)
    again = predict(model, loader, trainer)
    assert kept.image_ids == again.image_ids == [f"img{i}" for i in range(10)]
    assert torch.equal(kept.labels, again.labels) and torch.equal(kept.y_malignant, again.y_malignant)
    assert torch.allclose(kept.logits, again.logits, atol=1e-6)  # with flip TTA in both
    with torch.no_grad():
        by_hand = tta_logits(model.eval().eval_net, torch.stack([r["image"] for r in rows[:4]]), "flip")
        assert torch.allclose(kept.logits[:4], by_hand, atol=1e-6)
    # The quality gate's val features come from the same passes: each image's identity view, batch by batch.
    with_features = predict(model, loader, trainer, features=True)
    assert torch.allclose(with_features.logits, again.logits, atol=1e-6) and again.features is None
    images = torch.stack([r["image"] for r in rows])
    assert torch.allclose(with_features.features, pooled_features(model, images), atol=1e-5)
    trainer.test(model, dataloaders=DataLoader(rows[:3], batch_size=4), verbose=False)
    assert predictions_of(model.test_outputs, model).image_ids == ["img0", "img1", "img2"]  # a new test starts anew


def test_scale_or_translate_turn_the_rotation_into_one_affine():
    import albumentations as A

    from lesion.data.transforms import LesionTransforms

    data_config = {"input_size": [3, 30, 40], "mean": [0.5] * 3, "std": [0.5] * 3}
    plain = LesionTransforms(data_config, rotate=20)
    zoom = LesionTransforms(data_config, rotate=180, scale=0.15, translate=0.05)
    assert any(isinstance(t, A.Rotate) for t in plain.augment.transforms)
    (affine,) = [t for t in zoom.augment.transforms if isinstance(t, A.Affine)]
    assert affine.scale["x"] == (0.85, 1.15) and affine.rotate == (-180.0, 180.0)
    image = np.random.default_rng(0).integers(0, 256, (30, 40, 3)).astype(np.uint8)
    assert zoom(image, train=True).shape == (3, 30, 40)


def test_posthoc_adjustment_moves_the_7_class_decision_but_not_p_malignant():
    model = LesionClassifier(backbone=LITE, class_names=["a", "b", "c"], malignant=["c"], posthoc_adjustment=1.0)
    model.log_prior.copy_(torch.tensor([0.8, 0.15, 0.05]).log())
    logits = torch.tensor([[2.0, 1.0, 0.5]])
    assert logits.argmax(-1).item() == 0 and model.diagnosis_logits(logits).argmax(-1).item() == 2
    plain = LesionClassifier(backbone=LITE, class_names=["a", "b", "c"], malignant=["c"])
    assert torch.equal(plain.diagnosis_logits(logits), logits)
    probs = logits.softmax(-1)
    assert torch.equal(model.malignant_probability(probs), plain.malignant_probability(probs))


def test_posthoc_adjustment_val_chooses_the_tau_with_the_best_val_balanced_accuracy():
    from lesion.screening.evaluation import POSTHOC_TAUS, calibrate
    from lesion.screening.predictions import Predictions
    from lesion.stats.metrics import diagnosis_collection

    model = LesionClassifier(backbone=LITE, class_names=["a", "b", "c"], malignant=["c"], posthoc_adjustment="val")
    prior = torch.tensor([0.8, 0.15, 0.05])
    model.log_prior.copy_(prior.log())
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (600,), generator=generator)
    # Scores that carry the training prior, as a network trained on imbalanced data does: tau = 1 undoes it.
    logits = 1.5 * F.one_hot(labels, 3) + torch.randn(600, 3, generator=generator) + prior.log()
    val = Predictions([str(i) for i in range(600)], labels, logits, model.is_malignant(labels))
    info = calibrate(model, val, 0.8, "point")
    accuracy = diagnosis_collection(3)["balanced_accuracy"]
    scores = [float(accuracy(logits - t * prior.log(), labels)) for t in POSTHOC_TAUS]
    assert (
        info["posthoc_tau"] == float(model.posthoc_tau) == pytest.approx(float(POSTHOC_TAUS[scores.index(max(scores))]))
    )
    assert 0.6 <= info["posthoc_tau"] <= 1.4 and max(scores) > scores[0] + 0.05
    decided = model.diagnosis_logits(logits).argmax(-1)
    assert torch.equal(decided, (logits - float(model.posthoc_tau) * prior.log()).argmax(-1))
    with pytest.raises(ValueError, match="posthoc_adjustment"):
        LesionClassifier(backbone=LITE, class_names=["a", "b", "c"], malignant=["c"], posthoc_adjustment="auto")


def test_the_studys_class_weight_reaches_the_hard_label_loss_through_train_py(tmp_path):
    # No mixup, no smoothing: hard labels, the study's setting; class_weights [1, 10] (apple, orange)
    overrides = [*TINY, "model.class_weights=[1,10]", "callbacks.extra=[{_target_:spies.LossSpy}]"]
    train(compose_config("train", overrides, tmp_path))
    spy = torch.load(tmp_path / "spy.pt", weights_only=True)
    assert spy["loss_weights"].tolist() == [1.0, 10.0]
    calls = [c for c in spy["calls"] if c["targets"].ndim == 1]
    both = [c for c in calls if len(set(c["targets"].tolist())) == 2]
    assert calls == spy["calls"] and both, "premise: hard-label batches holding both classes"
    weight = torch.tensor([1.0, 10.0])
    for call in calls:  # the loss the module computed is the 10x-weighted cross-entropy
        assert call["loss"] == pytest.approx(
            float(F.cross_entropy(call["logits"], call["targets"], weight=weight)), 1e-5
        )
    # ... which differs from the unweighted one on those batches (planted: the weight is 10, not near 1)
    assert max(abs(call["loss"] - float(F.cross_entropy(call["logits"], call["targets"]))) for call in both) > 1e-3
