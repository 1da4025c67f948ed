"""train.py and eval.py through Hydra's compose API, on tiny apples/oranges runs."""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY, backbone_names, compose_config
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from eval import evaluate
from lesion.data.datamodule import LesionDataModule
from lesion.models.backbones import backbone_data_config
from lesion.models.module import LesionClassifier
from lesion.screening.predictions import Predictions
from train import train

SIZES = {"inception_v3": 96}


@pytest.mark.parametrize("backbone", backbone_names())
def test_fast_dev_run_trains_and_tests_every_backbone(backbone, tmp_path):
    size = SIZES.get(backbone, 64)
    overrides = [*TINY, f"backbone={backbone}", f"backbone.input_size={size}", "trainer.fast_dev_run=true"]
    overrides.append("backbone.allow_random_frozen=true")  # no hub here: the study's frozen stages stay random
    metrics = train(compose_config("train", overrides, tmp_path))
    assert {"test/recall", "test/specificity", "test/auroc", "test/pauc80", "test/tp"} <= set(metrics)
    assert json.loads((tmp_path / "metrics.json").read_text())["test/loss"] == pytest.approx(metrics["test/loss"])


def test_checkpoint_round_trips_through_eval(tmp_path):
    run_dir, eval_dir = tmp_path / "train", tmp_path / "eval"
    run_dir.mkdir(), eval_dir.mkdir()
    trained = train(compose_config("train", [*TINY, "trainer.max_epochs=2"], run_dir))
    written = json.loads((run_dir / "metrics.json").read_text())
    best = written["best_checkpoint"]
    assert best.endswith(".ckpt") and (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "csv" / "metrics.csv").is_file()

    model = LesionClassifier.load_from_checkpoint(best, map_location="cpu")
    assert model.hparams.class_names == ["apple", "orange"] and model.hparams.data["name"] == "apples_oranges"

    evaluated = evaluate(compose_config("eval", [f"ckpt_path={best}"], eval_dir))
    for key in ("test/accuracy", "test/recall", "test/specificity", "test/auroc", "test/pauc80", "test/tp"):
        assert evaluated[key] == pytest.approx(trained[key], abs=1e-6), key
    for name in ("metrics.json", "confusion_matrix.md", "confusion_matrix.png", "roc.png"):
        assert (eval_dir / name).stat().st_size > 0, name
    table = (eval_dir / "confusion_matrix.md").read_text()
    assert "| **total** |" in table and "apple" in table and "orange" in table


def test_throughput_counts_the_images_trained_on_under_gradient_accumulation(tmp_path):
    # 10 training images in batches of 4 (4, 4, 2), two batches a step: optimizer steps x batch size would say 16.
    overrides = [*TINY, "data.num_train=10", "trainer.max_epochs=2", "+trainer.accumulate_grad_batches=2"]
    metrics = train(compose_config("train", overrides, tmp_path))
    splits = pd.read_csv(tmp_path / "splits.csv")
    assert (splits["split"] == "train").sum() == 10
    assert metrics["train_images"] == 2 * 10
    seconds = metrics["fit_seconds"]  # rounded to 0.1 s, the throughput to 0.1 img/s
    assert 20 / (seconds + 0.05) - 0.05 <= metrics["train_img_per_s"] <= 20 / max(seconds - 0.05, 1e-3) + 0.05


def test_predict_step_refers_the_scores_above_the_stored_threshold(tmp_path):
    backbone = compose_config("train", TINY, tmp_path)["backbone"]
    model = LesionClassifier(backbone=backbone, class_names=["apple", "orange"], malignant=["orange"]).eval()
    images = torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    batch = {"image": images, "label": torch.zeros(6, dtype=torch.long), "image_id": [str(i) for i in range(6)]}
    with torch.no_grad():
        p = model.predict_step(batch, 0)["p_malignant"]
        model.deployment.threshold.fill_(float(p.median()))  # half the images above it, by construction
        out = model.predict_step(batch, 0)
    assert (
        torch.equal(out["malignant"], out["p_malignant"] > float(model.deployment.threshold))
        and out["malignant"].sum() == 3
    )


def test_eval_rejects_a_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        evaluate(compose_config("eval", [f"ckpt_path={tmp_path / 'nope.ckpt'}"], tmp_path))


def test_balanced_class_weights_come_from_the_training_split(tmp_path):
    overrides = [*TINY, "data.num_train=9", "model.class_weights=balanced", "trainer.fast_dev_run=true"]
    config = compose_config("train", overrides, tmp_path)
    from lesion.data import build_datamodule

    datamodule = build_datamodule(config["data"], backbone_data_config(**config["backbone"]))
    model = LesionClassifier(
        backbone=config["backbone"], class_names=["apple", "orange"], malignant=["orange"], class_weights="balanced"
    )
    L.Trainer(fast_dev_run=True, logger=False, enable_progress_bar=False).fit(model, datamodule=datamodule)
    assert datamodule.class_counts("train") == [5, 4]
    assert model.loss_weights.tolist() == pytest.approx([9 / 10, 9 / 8])


def test_wrong_class_weights_or_malignant_names_raise(tmp_path):
    backbone = compose_config("train", TINY, tmp_path)["backbone"]
    with pytest.raises(ValueError, match="class_weights"):
        LesionClassifier(backbone=backbone, class_weights=[1, 2, 3])
    with pytest.raises(ValueError, match="melanoma"):
        LesionClassifier(backbone=backbone, malignant=["melanoma"])


class ThreeClassData(LesionDataModule):
    """A tiny 3-class set (two benign classes, one malignant) to exercise the multiclass path."""

    classes = ("nv", "bkl", "mel")
    malignant = ("mel",)

    def load_frame(self) -> pd.DataFrame:
        split = np.repeat(["train", "val", "test"], 6)
        return pd.DataFrame(
            {"image_id": [f"{i % 3}_{i}" for i in range(18)], "label": np.arange(18) % 3, "split": split}
        )

    def reader(self):
        return ColourOfLabel()


class ColourOfLabel:
    def __call__(self, image_id: str) -> np.ndarray:
        return np.full((32, 32, 3), 60 * (int(image_id[0]) + 1), np.uint8)

    def problems(self, image_ids) -> list:
        return []


def test_multiclass_run_reports_balanced_accuracy_and_malignant_sum(tmp_path):
    backbone = compose_config("train", TINY, tmp_path)["backbone"]
    model = LesionClassifier(backbone=backbone, class_names=["nv", "bkl", "mel"], malignant=["mel"])
    datamodule = ThreeClassData(model.data_config, batch_size=3, eval_batch_size=3)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False)
    trainer.fit(model, datamodule=datamodule)
    metrics = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    # the logged figures against scikit-learn on the logits the test kept
    logits = torch.cat([o["logits"] for o in model.test_outputs])
    labels = torch.cat([o["label"] for o in model.test_outputs])
    decided = model.diagnosis_logits(logits).argmax(-1)
    assert metrics["test/balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, decided), abs=1e-6)
    p_malignant = model.scores(logits)[1]
    assert metrics["test/auroc"] == pytest.approx(roc_auc_score(model.is_malignant(labels), p_malignant), abs=1e-6)
    probs = torch.tensor([[0.2, 0.3, 0.5], [0.7, 0.2, 0.1]])
    assert model.malignant_probability(probs).tolist() == pytest.approx([0.5, 0.1])
    assert model.is_malignant(torch.tensor([0, 1, 2])).tolist() == [0, 0, 1]


def test_scores_apply_the_stored_temperature_then_the_platt_map(tmp_path):
    backbone = compose_config("train", TINY, tmp_path)["backbone"]
    model = LesionClassifier(backbone=backbone, class_names=["nv", "bkl", "mel"], malignant=["mel"])
    model.deployment.temperature.fill_(2.0)
    model.deployment.platt.copy_(torch.tensor([1.5, -0.5], dtype=torch.float64))
    logits = torch.tensor([[1.0, 0.0, 2.0], [0.5, 3.0, -1.0]])
    probs, p = model.scores(logits)
    torch.testing.assert_close(probs, (logits / 2.0).softmax(-1))
    z = torch.logit(probs[:, 2].double())
    torch.testing.assert_close(p, torch.sigmoid(1.5 * z - 0.5))  # float64: a steep map must not tie scores at 1.0
    assert torch.equal(model.scores(logits, platt=False)[1], probs[:, 2])  # what the Platt map is fitted on
    raw_probs, raw = model.scores(logits, temperature=False, platt=False)
    torch.testing.assert_close(raw_probs, logits.softmax(-1))
    assert torch.equal(raw, raw_probs[:, 2])
    # the screening report's predictions score through it, as predict_step and the Screener do
    preds = Predictions(
        image_ids=["a", "b"], labels=torch.tensor([2, 1]), logits=logits, y_malignant=torch.tensor([1, 0])
    )
    assert torch.equal(preds.p_malignant(model), p) and torch.equal(preds.p_malignant(model, calibrated=False), raw)


@pytest.mark.parametrize("channels_last", [True, False])
def test_both_memory_formats_train_on_synthetic_in_memory_data(tmp_path, channels_last):
    """channels_last is the CPU default; NCHW stays one override away."""
    tiny = [o for o in TINY if not o.startswith(("data.num_", "data.image_size"))]
    overrides = [*tiny, "data=synthetic", "data.num_images=40", "trainer.fast_dev_run=true"]
    config = compose_config("train", [*overrides, f"model.channels_last={channels_last}"], tmp_path)
    metrics = train(config)
    assert "test/auroc" in metrics
