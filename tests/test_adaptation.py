"""Adaptation to a site (adapt.py): a planted second camera that the source model reads backwards, moved back by
fine-tuning and not by recalibration; the threshold certified on the calibration part only; the site checkpoint."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY, compose_config
from fakes import make_pad, plant_signal
from torch import nn

from adapt import adapt
from eval import evaluate
from export import run_export
from lesion.models.adaptation import Strategy, fine_tune, reestimate_batchnorm, trained_parameters
from lesion.models.loading import eval_transforms, load_model
from lesion.stats.operating_point import choose_operating_point
from train import train

MALIGNANT = {"ACK", "BCC", "MEL", "SCC"}
SITE = ["data=pad_ufes_20", "data.num_workers=0", "bootstrap.resamples=50", "quality.min_side=32"]
QUICK_EVAL = ["bootstrap.resamples=20", "robustness.enabled=false", "fairness.enabled=false"]
HEAD = ["strategy=head", "strategy.lr=0.05", "strategy.max_epochs=15"]  # a linear probe: convex, it converges


def spot(diagnosis: str, rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """Camera A: a red spot on skin for malignant lesions, a blue one for benign (BGR)."""
    image = np.full((size, size, 3), rng.integers(120, 200, 3), np.uint8)
    centre = rng.integers(18, 30, 2)
    cv2.circle(
        image,
        (int(centre[0]), int(centre[1])),
        int(rng.integers(8, 14)),
        (40, 40, 210) if diagnosis in MALIGNANT else (210, 40, 40),
        -1,
    )
    return np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)


def second_camera(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Camera B: red and blue swapped and a slight blur: what camera A's model learnt, read backwards."""
    return cv2.GaussianBlur(image[..., ::-1], (0, 0), 0.7)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A source model whose P(malignant) is planted on camera A's photos (exactly, by least squares on its pooled
    features), and the photos of a site with camera B."""
    tmp = tmp_path_factory.mktemp("adapt")
    camera_a = make_pad(tmp / "camera_a", patients=40, draw=spot)
    camera_b = make_pad(tmp / "camera_b", patients=40, draw=spot, shift=second_camera, first=1000)
    data = ["data=pad_ufes_20", f"data.root={camera_a}", "data.task=binary", "data.batch_size=8", "data.num_workers=0"]
    overrides = [o for o in TINY if not o.startswith("data.")] + data + ["quality.min_side=32"]
    train(compose_config("train", overrides, tmp / "source"))
    best = json.loads((tmp / "source" / "metrics.json").read_text())["best_checkpoint"]
    aurocs = plant_signal(best, seed=0)
    assert min(aurocs.values()) > 0.9, f"premise: camera A's planted scores separate the classes ({aurocs})"
    return {"source": best, "root": camera_b, "tmp": tmp}


@pytest.fixture(scope="module")
def head(site) -> dict:
    """The site's photos adapted with the head strategy (adapt.py's figures)."""
    overrides = [f"ckpt_path={site['source']}", f"data.root={site['root']}", *SITE, *HEAD]
    return adapt(compose_config("adapt", overrides, site["tmp"] / "head"))


def test_fine_tuning_moves_a_planted_camera_shift_back_and_recalibration_cannot(site, head):
    tmp = site["tmp"]
    common = [f"ckpt_path={site['source']}", f"data.root={site['root']}", *SITE]
    recal = adapt(compose_config("adapt", [*common, "strategy=recalibrate"], tmp / "recalibrate"))
    assert head["source/test/auroc"] < 0.2, "premise: camera B's photos read backwards by the source model"
    assert recal["test/auroc"] == pytest.approx(recal["source/test/auroc"])  # a monotone refit keeps the ranking
    assert head["test/auroc"] > 0.9 and head["epochs"] > 0
    assert head["test_op/recall"] >= 0.75
    stored = torch.load(head["site_checkpoint"], map_location="cpu", weights_only=True)
    adaptation = stored["adaptation"]
    assert adaptation["source_checkpoint"] == site["source"] and adaptation["strategy"]["name"] == "head"
    assert adaptation["counts"]["calibration"]["images"] == 16 and adaptation["data"]["root"] == str(site["root"])
    assert stored["in_domain_test"]["test/auroc"] == head["test/auroc"]
    assert stored["quality"]["fitted_on"]["site"] and stored["quality"]["region"] == 0.5
    # the classifier alone moved, so the source's out-of-distribution reference is kept, widened by the site's photos
    assert stored["quality"]["fitted_on"]["ood_reference"] == "source reference widened by site photos"
    # The site model loads like any checkpoint; the source checkpoint is untouched.
    assert bool(load_model(head["site_checkpoint"]).deployment.calibrated)
    source, adapted = load_model(site["source"]), load_model(head["site_checkpoint"])
    assert float(source.deployment.threshold) != float(adapted.deployment.threshold)
    assert "| AUROC |" in (tmp / "head" / "adaptation.md").read_text()


def test_the_site_threshold_is_certified_on_the_calibration_part_alone(site, head):
    tmp, metrics = site["tmp"] / "head", head
    splits = pd.read_csv(tmp / "splits.csv")
    table = pd.read_csv(site["root"] / "metadata.csv")
    table["image_id"] = table["image"].str.replace(".jpg", "", regex=False)
    parts = splits.merge(table, on="image_id")
    assert parts.groupby("patient_id")["split"].nunique().max() == 1  # patients never straddle parts
    model = load_model(metrics["site_checkpoint"])
    transforms = eval_transforms(model)
    calibration = parts[parts["split"] == "val"]
    images = [cv2.cvtColor(cv2.imread(str(site["root"] / f)), cv2.COLOR_BGR2RGB) for f in calibration["image"]]
    with torch.no_grad():
        p = model.scores(model(torch.stack([transforms(im, train=False) for im in images])))[1]
    y = torch.tensor(calibration["diagnostic"].isin(MALIGNANT).to_numpy(), dtype=torch.long)
    chosen = choose_operating_point(p, y, 0.85, "lower_bound", 0.95)
    assert float(model.deployment.threshold) == pytest.approx(chosen["threshold"], abs=1e-6)
    assert model.deployment.operating_point["val_positives"] == int(y.sum())
    # eval.py without data= evaluates it on its source run's own test split (the source's splits are kept first) ...
    own = evaluate(
        compose_config("eval", [f"ckpt_path={metrics['site_checkpoint']}", *QUICK_EVAL], site["tmp"] / "own")
    )
    assert own["test/tp"] + own["test/fn"] + own["test/fp"] + own["test/tn"] == 24
    # ... and its leak guard knows the local parts: evaluating it on all of the site's photos is refused.
    with pytest.raises(ValueError, match="were used to train or tune"):
        external = [f"ckpt_path={metrics['site_checkpoint']}", "data=pad_ufes_20", f"data.root={site['root']}"]
        evaluate(compose_config("eval", [*external, "data.external=true", "data.num_workers=0"], site["tmp"] / "e"))


def test_the_site_model_card_shows_the_source_and_the_local_figures_and_names_external_sets(site, head, tmp_path):
    evals = tmp_path / "evals"
    other = make_pad(tmp_path / "other_clinic", patients=12, draw=spot, shift=second_camera, first=5000)
    external = [f"ckpt_path={head['site_checkpoint']}", "data=pad_ufes_20", f"data.root={other}", "data.external=true"]
    external += ["data.num_workers=0", "bootstrap.resamples=20", "robustness.enabled=false", "fairness.enabled=false"]
    outside = evaluate(compose_config("eval", external, evals / "external"))
    export = [f"ckpt_path={head['site_checkpoint']}", f"eval_search={evals}"]
    card = Path(run_export(compose_config("export", export, tmp_path / "x"))["card"]).read_text()
    assert "The site's local test part" in card and f"| AUROC | {head['test/auroc']:.3f} |" in card
    assert "### Adaptation to a site" in card and f"`{site['source']}`; strategy `head`" in card
    assert f"images (`{Path(site['source']).parents[1] / 'splits.csv'}`)" in card  # training data: the source's
    assert f"| AUROC | {head['source/test/auroc']:.3f} (" in card  # the source model on the same local photos
    row = next(line for line in card.splitlines() if f"`{other}`" in line)
    assert row.startswith("| `csv` at") and f"| 24 | {outside['test/auroc']:.3f} (" in row
    # Every sentence about data from what the checkpoints record: source and site are PAD-UFES-20 clinical photos
    assert "- Source `csv`: PAD-UFES-20; modality: clinical; who is in it: smartphone photos" in card
    assert "- Adapted to the site data `csv`: PAD-UFES-20; modality: clinical" in card
    assert "it saw clinical images only" in card and "site's own local test part" in card
    assert "HAM10000" not in card and "Vienna" not in card and "dermoscopic" not in card


def test_the_source_models_card_does_not_take_an_adaptation_run_for_its_test_split(site, head, tmp_path):
    export = [f"ckpt_path={site['source']}", f"eval_search={site['tmp']}"]  # holds the source run and adapt.py's
    card = Path(run_export(compose_config("export", export, tmp_path / "x"))["card"]).read_text()
    source_metrics = Path(site["source"]).parents[1] / "metrics.json"
    assert f"The in-domain test split of the training data, from `{source_metrics}`" in card


def test_strategies_move_only_their_weights_and_l2sp_holds_them_near_the_source():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    x, y = torch.randn(64, 4), (torch.arange(64) % 2).numpy()
    mask = torch.tensor([False, True])

    def tuned(strategy: Strategy) -> nn.Module:
        tuned = copy.deepcopy(net)
        fine_tune(tuned, mask, lambda rows, seed: x[rows], y, strategy, epochs=5)
        return tuned

    head = tuned(Strategy("head", train=["3"], lr=0.05, max_epochs=5))
    assert torch.equal(head[0].weight, net[0].weight) and not torch.equal(head[3].weight, net[3].weight)
    free = tuned(Strategy("all", train=["*"], lr=0.05, max_epochs=5))
    held = tuned(Strategy("l2sp", train=["*"], lr=0.05, l2sp=100.0, max_epochs=5))
    moved = lambda m: sum(float((a - b).detach().norm()) for a, b in zip(m.parameters(), net.parameters()))  # noqa: E731
    assert moved(held) < 0.5 * moved(free)
    with pytest.raises(ValueError, match=r"strategy.train names \['blocks.9'\]"):
        trained_parameters(net, ["blocks.9"])


def test_batchnorm_statistics_are_re_estimated_as_plain_averages_over_the_local_photos():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5)).eval()
    batches = [torch.randn(5, 3, 8, 8) + 2 for _ in range(3)]
    assert reestimate_batchnorm(net, batches) == 1
    with torch.no_grad():
        inputs = torch.cat([net[0](b) for b in batches])
    torch.testing.assert_close(net[1].running_mean, inputs.mean((0, 2, 3)), rtol=1e-5, atol=1e-5)
    assert not net[1].training and net[1].momentum == 0.1 and not net[2].training


def test_adapt_py_keys_reach_the_site_checkpoint(site, tmp_path):
    from scipy.stats import beta

    keys = ["strategy=head", "strategy.lr=0.02", "strategy.max_epochs=3", "strategy.batch_size=4"]
    keys += ["strategy.weight_decay=0.5", "strategy.train=[classifier]", "strategy.bn_stats=false"]
    keys += ["operating_point.target_sensitivity=0.6", "operating_point.confidence=0.7"]
    overrides = [f"ckpt_path={site['source']}", f"data.root={site['root']}", *SITE, *keys]
    metrics = adapt(compose_config("adapt", overrides, tmp_path))
    info = torch.load(metrics["site_checkpoint"], map_location="cpu", weights_only=True)["adaptation"]
    asked = {"lr": 0.02, "max_epochs": 3, "batch_size": 4, "weight_decay": 0.5, "train": ["classifier"]}
    assert {k: info["strategy"][k] for k in asked} == asked and info["strategy"]["bn_stats"] is False
    assert 0 <= info["epochs"] <= 3  # the folds choose within strategy.max_epochs
    source, adapted = load_model(site["source"]), load_model(metrics["site_checkpoint"])
    before = dict(source.eval_net.named_parameters())
    moved = [n for n, p in adapted.eval_net.named_parameters() if not torch.equal(p, before[n])]
    assert all(n.startswith("classifier") for n in moved)  # strategy.train: nothing else moves
    op = adapted.deployment.operating_point
    n = op["val_positives"]
    k = np.arange(1, n + 1)
    needed = int(np.nonzero(beta.ppf(1 - 0.7, k, n - k + 1) >= 0.6)[0][0]) + 1
    assert op["target_sensitivity"] == 0.6 and op["confidence"] == 0.7 and op["val_detected"] == needed
