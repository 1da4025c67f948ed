"""Ensembles of checkpoints: mean logits, one operating point fitted on the ensemble's val output, every consumer."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from conftest import TINY, compose_config
from fakes import jpeg, plant_signal
from sklearn.metrics import roc_auc_score

from eval import evaluate
from export import run_export
from lesion.data import build_datamodule
from lesion.models.ensemble import LesionEnsemble, MeanLogits
from lesion.models.loading import assemble, load_model
from lesion.screening.checkpoints import in_domain_metrics
from lesion.serving.export import ScreeningNet
from lesion.stats.operating_point import choose_operating_point
from predict import run_predict
from train import train

EVAL = ["bootstrap.resamples=20", "robustness.enabled=false", "fairness.enabled=false"]


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> list[str]:
    """Two tiny runs that differ only in their seed, whose val and test logits carry a planted signal (a few training
    steps learn nothing reliably): calibrating the ensemble then has something to fit."""
    paths = []
    for seed in (0, 1):
        run = tmp_path_factory.mktemp(f"seed{seed}")
        train(compose_config("train", [*TINY, "data.num_val=16", "data.num_test=16", f"seed={seed}"], run))
        paths.append(json.loads((run / "metrics.json").read_text())["best_checkpoint"])
        aurocs = plant_signal(paths[-1], seed=seed)
        assert aurocs["val"] > 0.8, f"premise: the planted val scores separate the classes ({aurocs})"
    return paths


def test_ensemble_logits_are_the_mean_of_the_members(members):
    ensemble = assemble(members, tta=False)
    single = [load_model(p) for p in members]
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = torch.stack([m.eval_net(x) for m in single]).mean(0)
        torch.testing.assert_close(ensemble(x), expected)
        ensemble.hparams.tta = True
        flips = [x, x.flip(-1), x.flip(-2), x.flip(-2, -1)]
        with_tta = torch.stack([torch.stack([m.eval_net(v) for m in single]).mean(0) for v in flips]).mean(0)
        torch.testing.assert_close(ensemble(x), with_tta)
        ensemble.hparams.tta = "dihedral"
        turned = [v.transpose(-2, -1) for v in flips]
        dihedral = torch.stack([torch.stack([m.eval_net(v) for m in single]).mean(0) for v in flips + turned]).mean(0)
        torch.testing.assert_close(ensemble(x), dihedral)
    assert isinstance(ensemble.eval_net, MeanLogits) and not bool(ensemble.deployment.calibrated)
    assert not torch.equal(single[0].eval_net(x), single[1].eval_net(x))  # the members really differ


def test_eval_calibrates_the_ensemble_on_its_val_output_and_stores_it(members, tmp_path):
    report = evaluate(compose_config("eval", [f"ckpt_path=[{members[0]},{members[1]}]", *EVAL], tmp_path))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    stored = load_model(metrics["calibrated_checkpoint"])
    assert isinstance(stored, LesionEnsemble) and bool(stored.deployment.calibrated)
    assert stored.member_paths == members and metrics["checkpoint"] == members
    assert float(stored.deployment.threshold) == pytest.approx(report["threshold"])
    # ... with the test figures a later external evaluation of ensemble.ckpt compares against
    assert in_domain_metrics(metrics["calibrated_checkpoint"])["test/auroc"] == report["test/auroc"]
    # Independently: the members' mean logits on val give the same temperature-scaled threshold ...
    single = [load_model(p) for p in members]
    datamodule = build_datamodule(single[0].hparams.data, single[0].data_config)
    datamodule.setup("fit")
    datamodule.setup("test")

    def mean_logits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = zip(*[(b["image"], b["label"]) for b in getattr(datamodule, f"{split}_dataloader")()])
        with torch.no_grad():
            logits = torch.stack([m.eval_net(torch.cat(images)) for m in single]).mean(0)
        return logits, torch.cat(labels)

    a, b = (float(v) for v in stored.deployment.platt)
    assert stored.deployment.operating_point["calibrator"] == "platt" and (a, b) != (1.0, 0.0)

    def calibrated(logits: torch.Tensor) -> torch.Tensor:  # Platt's map of the temperature-scaled P(malignant)
        p = (logits.double() / float(stored.deployment.temperature)).softmax(-1)[:, 1]
        return 1 / (1 + torch.exp(-(a * torch.log(p / (1 - p)) + b)))

    logits, labels = mean_logits("val")
    p_val = calibrated(logits)
    chosen = choose_operating_point(p_val, labels, 0.8, "lower_bound", 0.95)  # eval.yaml's operating_point
    assert float(stored.deployment.threshold) == pytest.approx(chosen["threshold"], abs=1e-6)
    # ... and the same test AUROC and sensitivity at the stored threshold.
    logits, labels = mean_logits("test")
    p_test = calibrated(logits)
    assert metrics["test/auroc"] == pytest.approx(roc_auc_score(labels.numpy(), p_test.numpy()), abs=1e-6)
    called = p_test > float(stored.deployment.threshold)
    assert metrics["test_op/recall"] == pytest.approx(float(called[labels == 1].float().mean()), abs=1e-6)


def test_every_consumer_gets_the_ensemble_decision(members, tmp_path):
    evaluate(compose_config("eval", [f"ckpt_path=[{members[0]},{members[1]}]", *EVAL], tmp_path / "eval"))
    ckpt = json.loads((tmp_path / "eval" / "metrics.json").read_text())["calibrated_checkpoint"]
    ensemble = load_model(ckpt)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        (photos / f"spot{i}.jpg").write_bytes(jpeg(i, size=40))
    overrides = [
        f"ckpt_path={ckpt}",
        f"input={photos}",
        "gradcam=false",
        "quality.enabled=false",
    ]  # not the gate's test
    run_predict(compose_config("predict", overrides, tmp_path / "p"))
    table = pd.read_csv(tmp_path / "p" / "predictions.csv")
    assert len(table) == 4
    assert ((table["p_malignant"] > float(ensemble.deployment.threshold)) == (table["decision"] == "refer")).all()
    written = run_export(compose_config("export", [f"ckpt_path={ckpt}", "card=false"], tmp_path / "x"))
    session = ort.InferenceSession(written["model"], providers=["CPUExecutionProvider"])
    images = torch.rand(8, *ensemble.data_config["input_size"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ScreeningNet(ensemble)(images)[1].numpy()
    assert np.abs(session.run(["p_malignant"], {"image": images.numpy()})[0] - expected).max() <= 1e-4
    meta = session.get_modelmeta().custom_metadata_map
    assert float(meta["threshold"]) == pytest.approx(float(ensemble.deployment.threshold))


def test_uncalibrated_models_are_refused_until_eval_calibrates_them(members, tmp_path):
    listed = f"ckpt_path=[{members[0]},{members[1]}]"
    with pytest.raises(ValueError, match="run `python eval.py"):
        run_predict(compose_config("predict", [listed, f"input={tmp_path}"], tmp_path / "p"))
    ckpt = torch.load(members[0], map_location="cpu", weights_only=False)
    ckpt["state_dict"]["deployment.calibrated"] = torch.tensor(False)
    raw = tmp_path / "raw.ckpt"
    torch.save(ckpt, raw)
    with pytest.raises(ValueError, match="allow_uncalibrated=true"):
        run_export(compose_config("export", [f"ckpt_path={raw}", "card=false"], tmp_path / "x"))
    run_export(compose_config("export", [f"ckpt_path={raw}", "card=false", "allow_uncalibrated=true"], tmp_path / "x"))
    metrics = evaluate(compose_config("eval", [f"ckpt_path={raw}", *EVAL], tmp_path / "eval"))
    copy = tmp_path / "raw.calibrated.ckpt"
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["calibrated_checkpoint"] == str(copy)
    assert bool(load_model(copy).deployment.calibrated) and not bool(load_model(raw).deployment.calibrated)
    assert float(load_model(copy).deployment.threshold) == pytest.approx(metrics["threshold"])


def test_members_with_another_input_pipeline_are_refused(members, tmp_path):
    ckpt = torch.load(members[1], map_location="cpu", weights_only=False)
    ckpt["hyper_parameters"]["backbone"]["input_size"] = 96
    other = tmp_path / "other.ckpt"
    torch.save(ckpt, other)
    with pytest.raises(ValueError, match=r"other\.ckpt differs from .* in \['input_size'"):
        assemble([members[0], other])


def test_a_trained_checkpoint_under_another_tta_is_an_ensemble_of_one_calibrated_anew(members, tmp_path):
    plain = load_model(members[0])
    x = torch.randn(2, 3, 64, 64)
    turned = load_model(members[0], tta="dihedral")
    assert isinstance(turned, LesionEnsemble) and len(turned.members) == 1 and not bool(turned.deployment.calibrated)
    flips = [x, x.flip(-1), x.flip(-2), x.flip(-2, -1)]
    views = flips + [v.transpose(-2, -1) for v in flips]
    with torch.no_grad():
        torch.testing.assert_close(turned(x), torch.stack([plain.eval_net(v) for v in views]).mean(0))
    report = evaluate(compose_config("eval", [f"ckpt_path={members[0]}", "tta=dihedral", *EVAL], tmp_path))
    stored = load_model(json.loads((tmp_path / "metrics.json").read_text())["calibrated_checkpoint"])
    assert stored.hparams.tta == "dihedral" and bool(stored.deployment.calibrated)
    assert float(stored.deployment.threshold) == pytest.approx(report["threshold"])
    assert bool(load_model(members[0]).deployment.calibrated)  # the trained checkpoint keeps its own operating point
