"""Operating point, calibration, bootstrap CIs, fairness, skin tone (ITA) and robustness degradations."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, compose_config

from eval import evaluate
from lesion.data.degradations import DEGRADATIONS, degrade
from lesion.models.module import LesionClassifier
from lesion.stats.calibration import calibration_scores, fit_temperature
from lesion.stats.fairness import fairness_table, group_columns, ita_category, ita_degrees
from lesion.stats.metrics import screening_metrics
from lesion.stats.operating_point import (
    balanced_accuracy_ci,
    bootstrap_ci,
    choose_operating_point,
    sensitivity_lower_bound,
    threshold_for_sensitivity,
)
from train import train


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95])
def test_threshold_reaches_the_target_sensitivity_and_is_the_highest_that_does(target):
    rng = np.random.default_rng(1)
    y = torch.tensor(rng.integers(0, 2, 500))
    p = torch.tensor(np.clip(rng.normal(0.4 + 0.2 * y.numpy(), 0.15), 0, 1)).float()
    t = threshold_for_sensitivity(p, y, target)
    assert screening_metrics(p, y, t)["recall"] >= target
    higher = p[p > t].min().item()  # the next threshold up calls one fewer case malignant
    assert screening_metrics(p, y, higher)["recall"] < target


@pytest.mark.parametrize("method", ["point", "lower_bound"])
def test_the_stored_threshold_decides_val_exactly_as_chosen(method):
    # Scores a float32 step apart at the cut: a float32 midpoint rounds onto the k-th score, which is then missed.
    rng = np.random.default_rng(0)
    y = torch.tensor(rng.integers(0, 2, 400))
    p = torch.tensor(rng.uniform(0.2, 0.9, 400), dtype=torch.float32)
    chosen = choose_operating_point(p, y, 0.8, method)
    kth = torch.sort(p[y == 1], descending=True).values[chosen["val_detected"] - 1]
    below = p[p < kth]
    p[p == below.max()] = torch.nextafter(kth, torch.tensor(0.0))  # the next lower score: adjacent to the k-th
    chosen = choose_operating_point(p, y, 0.8, method)
    model = LesionClassifier(backbone={"model_name": "resnet18", "pretrained": False})
    model.deployment.threshold.fill_(chosen["threshold"])
    stored = float(model.deployment.threshold)
    assert stored == chosen["threshold"]  # stored exactly
    detected = int(((p > model.deployment.threshold) & (y == 1)).sum())  # the module's own comparison (predict_step)
    assert detected == chosen["val_detected"]
    assert screening_metrics(p, y, stored)["recall"] == pytest.approx(chosen["val_detected"] / int(y.sum()))
    assert screening_metrics(p.double(), y, stored)["recall"] == pytest.approx(chosen["val_detected"] / int(y.sum()))


def test_threshold_without_malignant_cases_is_an_error():
    with pytest.raises(ValueError, match="no malignant"):
        threshold_for_sensitivity(torch.rand(10), torch.zeros(10))


def test_clopper_pearson_lower_bound_is_the_sensitivity_that_makes_the_observed_count_a_5_percent_tail():
    from scipy.stats import binom

    for detected, positives in ((8, 10), (170, 200), (40, 41)):
        bound = sensitivity_lower_bound(detected, positives, 0.95)
        assert binom.sf(detected - 1, positives, bound) == pytest.approx(0.05, abs=1e-9)  # P(X >= detected) = 5%
    assert sensitivity_lower_bound(8, 10, 0.95) == pytest.approx(0.4931, abs=1e-4)
    assert sensitivity_lower_bound(10, 10, 0.95) == pytest.approx(0.05**0.1, abs=1e-9)  # (1 - level)^(1/n)
    assert sensitivity_lower_bound(0, 10, 0.95) == 0.0


def test_lower_bound_threshold_keeps_its_promise_where_the_point_rule_fails_half_the_time():
    """Val draws from known score distributions (malignant ~ N(1.5, 1), benign ~ N(0, 1), 150 malignant), each
    threshold judged by its exact sensitivity on the population (a test set without sampling error)."""
    from scipy.stats import norm

    rng = np.random.default_rng(0)
    draws, kept = 1000, {"point": 0, "lower_bound": 0}
    for _ in range(draws):
        y = torch.tensor([1] * 150 + [0] * 600)
        p = torch.tensor(np.concatenate([rng.normal(1.5, 1, 150), rng.normal(0, 1, 600)]))
        for method in kept:
            op = choose_operating_point(p, y, 0.8, method, 0.95)
            kept[method] += norm.sf(op["threshold"] - 1.5) >= 0.8
    mc_error = 3 * (0.95 * 0.05 / draws) ** 0.5
    assert kept["lower_bound"] / draws >= 0.95 - mc_error
    assert 0.35 <= kept["point"] / draws <= 0.65


def test_lower_bound_detects_enough_val_positives_and_warns_when_too_few(caplog):
    y = torch.tensor([1] * 200 + [0] * 200)
    p = torch.cat([torch.linspace(0.3, 1.0, 200), torch.linspace(0.0, 0.7, 200)])
    op = choose_operating_point(p, y, 0.8, "lower_bound", 0.95)
    detected = int(((p > op["threshold"]) & (y == 1)).sum())
    assert detected == op["val_detected"] and op["sensitivity_lower_bound"] >= 0.8
    assert sensitivity_lower_bound(detected - 1, 200, 0.95) < 0.8  # the highest threshold that certifies it
    few = choose_operating_point(p[190:210], y[190:210], 0.8, "lower_bound", 0.95)  # 10 positives: bound <= 0.741
    assert few["val_detected"] == 10 and few["sensitivity_lower_bound"] < 0.8 and "cannot certify" in caplog.text
    with pytest.raises(ValueError, match="operating_point.method"):
        choose_operating_point(p, y, 0.8, "median")


def test_temperature_scaling_lowers_nll_of_overconfident_logits():
    rng = np.random.default_rng(0)
    labels = torch.tensor(rng.integers(0, 2, 2000))
    signal = torch.tensor(rng.normal(0, 1, 2000)) + (labels * 2 - 1) * 0.8
    logits = torch.stack([-signal, signal], dim=1) * 4  # right ranking, far too confident
    temperature = fit_temperature(logits, labels)
    before = calibration_scores(logits.softmax(-1), labels)
    after = calibration_scores((logits / temperature).softmax(-1), labels)
    assert temperature > 1.5 and after["nll"] < before["nll"] and after["ece"] < before["ece"]
    assert after["nll"] == pytest.approx(F.cross_entropy(logits / temperature, labels).item(), rel=1e-6)


def test_bootstrap_cis_contain_the_point_estimates():
    rng = np.random.default_rng(2)
    y = torch.tensor(rng.integers(0, 2, 400))
    p = torch.tensor(np.clip(rng.normal(0.35 + 0.3 * y.numpy(), 0.2), 0, 1)).float()
    point = screening_metrics(p, y, 0.5)
    cis = bootstrap_ci(p, y, 0.5, resamples=300)
    for name in ("auroc", "pauc80", "recall", "specificity"):
        low, high = cis[name]
        assert low <= point[name] <= high and low < high, name


def test_bootstrap_ci_resamples_within_each_class_at_the_level_asked():
    # Two malignant images, one scored above every benign one (0.9) and one below (0.1); 50 benign between 0.2 and
    # 0.45. Resampled within classes, each resample holds 2 malignant images: both the high one (chance 1/4), one of
    # each (1/2) or both the low one (1/4), so sensitivity at 0.5 and AUROC are each 1, 0.5 or 0, and specificity 1.
    p = torch.tensor([0.9, 0.1] + np.linspace(0.2, 0.45, 50).tolist())
    y = torch.tensor([1, 1] + [0] * 50)
    wide = bootstrap_ci(p, y, 0.5, resamples=2000, level=0.95)
    assert wide["recall"] == (0.0, 1.0) and wide["auroc"] == pytest.approx((0.0, 1.0))
    assert wide["specificity"] == (1.0, 1.0)
    # A 40% interval (30th to 70th percentile) lies inside the half of the mass at 0.5. Ignoring the level gives
    # (0, 1); resampling all 52 images together leaves a third of resamples without the high one (recall 0).
    narrow = bootstrap_ci(p, y, 0.5, resamples=2000, level=0.4)
    assert narrow["recall"] == (0.5, 0.5) and narrow["auroc"] == pytest.approx((0.5, 0.5))


def test_balanced_accuracy_ci_resamples_within_each_class():
    from sklearn.metrics import balanced_accuracy_score

    # Class 0: two images, one right; class 1: 50, all right. Resampled within classes, class 0's recall is 0, 0.5 or
    # 1 (chances 1/4, 1/2, 1/4) and class 1's always 1: balanced accuracy 0.5, 0.75 or 1, so the 95% CI is (0.5, 1).
    labels = torch.tensor([0, 0] + [1] * 50)
    predicted = torch.tensor([0, 1] + [1] * 50)
    assert balanced_accuracy_ci(predicted, labels, resamples=1000) == (0.5, 1.0)
    assert balanced_accuracy_ci(labels, labels, resamples=50) == (1.0, 1.0)
    rng = np.random.default_rng(3)
    labels = torch.tensor(rng.choice(4, 600, p=[0.7, 0.2, 0.07, 0.03]))  # imbalanced, as ISIC's 7 classes
    predicted = torch.where(torch.tensor(rng.random(600) < 0.7), labels, torch.tensor(rng.integers(0, 4, 600)))
    point = balanced_accuracy_score(labels.numpy(), predicted.numpy())
    low, high = balanced_accuracy_ci(predicted, labels, resamples=500)
    assert low < point < high and high - low < 0.25
    wider = balanced_accuracy_ci(predicted[:150], labels[:150], resamples=500)  # a quarter of the images
    assert wider[1] - wider[0] > high - low


def test_fairness_numbers_equal_hand_computed_values():
    # Group a: 4 malignant (3 called), 4 benign (1 called); group b: 2 malignant (both called), 2 benign (none).
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0])
    p = np.array([0.9, 0.8, 0.7, 0.2, 0.6, 0.3, 0.1, 0.2, 0.9, 0.8, 0.1, 0.2])
    groups = pd.DataFrame({"sex": ["f"] * 8 + ["m"] * 4})
    table, gaps = fairness_table(y, p, groups, threshold=0.5, min_positives=2)
    a, b = table.set_index("group").loc["f"], table.set_index("group").loc["m"]
    assert (a["images"], a["malignant"], b["images"], b["malignant"]) == (8, 4, 4, 2)
    assert a["sensitivity"] == pytest.approx(3 / 4) and a["specificity"] == pytest.approx(3 / 4)
    assert b["sensitivity"] == 1.0 and b["specificity"] == 1.0
    # AUROC of group a by hand: of the 16 malignant/benign pairs, 13 are ordered right and one is tied (0.2/0.2).
    assert a["auroc"] == pytest.approx(13.5 / 16)
    gap = gaps.set_index("metric").loc["sensitivity"]
    assert gap["gap"] == pytest.approx(0.25) and gap["worst"] == "f"
    table, gaps = fairness_table(y, p, groups, threshold=0.5, min_positives=3)
    row = table.set_index("group").loc["m"]
    assert bool(row["underpowered"]) and math.isnan(row["sensitivity"]) and gaps.empty


def test_groups_come_from_metadata():
    frame = pd.DataFrame({"sex": ["male", None], "age": [25, 80], "localization": ["back", "face"], "ita": [60, -40]})
    groups = group_columns(frame)
    assert groups.to_dict("list") == {
        "sex": ["male", "unknown"],
        "age_band": ["<30", "75+"],
        "site": ["back", "face"],
        "skin_tone": ["very light", "dark"],
    }


@pytest.mark.parametrize(
    "ita, category",
    [(62, "very light"), (48, "light"), (34, "intermediate"), (19, "tan"), (-10, "brown"), (-45, "dark")],
)
def test_ita_estimator_returns_the_category_of_synthetic_skin(ita, category):
    b_star = 15.0
    lightness = 50 + b_star * math.tan(math.radians(ita))
    lab = np.zeros((64, 64, 3), np.float32)
    lab[...] = (lightness, 8.0, b_star)
    yy, xx = np.mgrid[:64, :64]
    lab[(yy - 32) ** 2 + (xx - 32) ** 2 < 14**2] = (max(lightness - 30, 16), 15.0, 20.0)  # a darker lesion
    image = (np.clip(cv2.cvtColor(lab, cv2.COLOR_Lab2RGB), 0, 1) * 255).round().astype(np.uint8)
    assert ita_category(ita_degrees(image)) == category
    assert ita_degrees(image) == pytest.approx(ita, abs=3)


@pytest.mark.parametrize("name", sorted(DEGRADATIONS))
def test_each_degradation_changes_the_image_and_severity_zero_is_identity(name):
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(60, 200, (64, 64, 3)).astype(np.uint8), (0, 0), 1.5)
    assert degrade(image, name, 0) is image
    previous = image
    for severity in (1, 2, 3):
        out = degrade(image, name, severity)
        assert out.shape == image.shape and out.dtype == np.uint8
        assert np.abs(out.astype(int) - image).mean() > 0.5
        previous = out
    assert not np.array_equal(previous, degrade(image, name, 1))


def test_eval_end_to_end_writes_every_artifact(tmp_path):
    run, ev = tmp_path / "train", tmp_path / "eval"
    run.mkdir(), ev.mkdir()
    trained = train(
        compose_config("train", [*TINY, "data.num_val=16", "data.num_test=16", "trainer.max_epochs=2"], run)
    )
    best = trained and json.loads((run / "metrics.json").read_text())["best_checkpoint"]
    model = LesionClassifier.load_from_checkpoint(best)
    assert bool(model.deployment.calibrated) and float(model.deployment.threshold) == pytest.approx(
        trained["threshold"]
    )
    assert float(model.deployment.temperature) == pytest.approx(trained["temperature"])
    stored = torch.load(best, map_location="cpu", weights_only=False)["operating_point"]
    assert (
        stored["method"] == "lower_bound"
        and stored["confidence_asked"] == 0.95
        and stored["checkpoints_compared"] == 2  # val chose between 2 epochs and certifies: Bonferroni
        and stored["confidence"] == pytest.approx(1 - 0.05 / 2)
        and model.deployment.operating_point == stored
    )
    assert trained["operating_point/sensitivity_lower_bound"] == pytest.approx(stored["sensitivity_lower_bound"])
    # val certifies: its one scoring pass is timed once, not overwritten by a calibration pass that did not run
    steps = [k.split("/", 1)[1] for k in trained if k.startswith("after_fit_seconds/")]
    assert steps[:2] == ["val scored", "calibrated"] and trained["after_fit_seconds/val scored"] > 0
    overrides = [f"ckpt_path={best}", "bootstrap.resamples=50", "robustness.max_images=8", "fairness.min_positives=1"]
    report = evaluate(compose_config("eval", overrides, ev))
    for name in (
        "metrics.json",
        "predictions.csv",
        "confusion_matrix.md",
        "confusion_matrix.png",
        "confusion_matrix_op.png",
        "roc.png",
        "pr.png",
        "reliability.png",
        "fairness.md",
        "fairness.csv",
        "robustness.md",
        "robustness.csv",
        "robustness.png",
    ):
        assert (ev / name).stat().st_size > 0, name
    assert report["threshold"] == pytest.approx(trained["threshold"])
    for key in ("test_op/recall", "test_op/specificity", "test_op/auroc_ci", "test_calibration/ece_after"):
        assert key in report
    robustness = pd.read_csv(ev / "robustness.csv")
    assert (
        len(robustness) == len(DEGRADATIONS) * 4 and (robustness.loc[robustness.severity == 0, "auroc_drop"] == 0).all()
    )
    fairness = pd.read_csv(ev / "fairness.csv")
    tones = fairness[fairness["attribute"] == "skin_tone"]
    # the skin-tone groups partition the test split, and their detections add up to the report's confusion counts
    benign = tones["images"] - tones["malignant"]
    assert tones["images"].sum() == 16 and tones["malignant"].sum() == report["test_op/tp"] + report["test_op/fn"]
    assert (tones["sensitivity"].fillna(0) * tones["malignant"]).sum() == pytest.approx(report["test_op/tp"])
    assert (tones["specificity"].fillna(0) * benign).sum() == pytest.approx(report["test_op/tn"])
    clean = robustness[robustness.severity == 0]
    assert clean["auroc"].nunique() == 1 and (robustness["images"] == 8).all()  # one clean baseline for all


def test_a_calibration_split_alone_sets_the_threshold_and_the_card_says_so(tmp_path):
    import lightning as L

    from lesion.data import build_datamodule
    from lesion.screening.predictions import predict
    from lesion.serving.model_card import model_card

    overrides = [*TINY, "data.num_train=24", "data.num_val=8", "data.calibration_fraction=0.25"]
    config = compose_config("train", overrides, tmp_path)
    trained = train(config)
    best = json.loads((tmp_path / "metrics.json").read_text())["best_checkpoint"]
    model = LesionClassifier.load_from_checkpoint(best).eval()
    op = model.deployment.operating_point
    assert op["calibration_split"] == "calibration" and "calibration_op/recall" in trained
    splits = pd.read_csv(tmp_path / "splits.csv")
    assert (splits["split"] == "calibration").sum() == len(model.deployment.split_ids["calibration"]) > 0
    # the stored threshold is the rule's choice on the calibration split's scores (stored temperature and Platt map)
    datamodule = build_datamodule(config["data"] | {"split_file": str(tmp_path / "splits.csv")}, model.data_config)
    trainer = L.Trainer(logger=False, enable_progress_bar=False)
    scored = predict(model, datamodule.calibration_dataloader(), trainer)
    chosen = choose_operating_point(scored.p_malignant(model), scored.y_malignant, 0.8, "lower_bound", 0.95)
    assert float(model.deployment.threshold) == pytest.approx(chosen["threshold"], abs=1e-7)
    card = model_card(model, Path(best), None)
    assert "separate calibration split (data.calibration_fraction), not the validation split" in card
    bound = f"the lower bound reached {chosen['sensitivity_lower_bound']:.3f} from {chosen['val_positives']} malignant"
    assert bound in card  # what the promise rests on, and how many images


def test_temperature_stays_bounded_and_keeps_the_ranking_of_scores_without_signal():
    from lesion.stats.calibration import TEMPERATURE_BOUNDS, fit_temperature
    from lesion.stats.metrics import screening_metrics

    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (400,), generator=generator)
    # Confident and wrong as often as right: NLL alone would push T towards infinity.
    logits = torch.randn(400, 2, generator=generator) * 30
    t = fit_temperature(logits, labels)
    assert t == TEMPERATURE_BOUNDS[1]
    p = (logits / t).softmax(-1)[:, 1]
    assert p.unique().numel() > 390  # no float32 ties: the scores still rank the images
    raw = screening_metrics(torch.sigmoid((logits[:, 1] - logits[:, 0]).double() / 1e3).float(), labels)["auroc"]
    assert screening_metrics(p, labels)["auroc"] == pytest.approx(raw, abs=1e-3)


def test_train_and_eval_report_the_same_test_figures_for_a_7_class_model(tmp_path):
    """One definition of P(malignant) everywhere: softmax(logits / T) summed over the malignant classes, with the
    checkpoint's fitted temperature T, which changes the ranking of a sum of softmaxes."""
    from fakes import make_isic2018

    root = make_isic2018(tmp_path / "isic2018", n=140)
    data = ["data=isic2018", f"data.root={root}", "data.task=diagnosis", "data.val_fraction=0.25"]
    data += ["data.test_fraction=0.25", "data.batch_size=8", "data.eval_batch_size=8"]
    tiny = [o for o in TINY if not o.startswith("data.")] + data + ["trainer.max_epochs=2"]
    trained = train(compose_config("train", tiny, tmp_path / "train"))
    best = json.loads((tmp_path / "train" / "metrics.json").read_text())["best_checkpoint"]
    model = LesionClassifier.load_from_checkpoint(best)
    assert len(model.hparams.class_names) == 7 and float(model.deployment.temperature) != pytest.approx(1.0, abs=1e-3)
    overrides = [f"ckpt_path={best}", "bootstrap.resamples=20", "robustness.enabled=false", "fairness.enabled=false"]
    report = evaluate(compose_config("eval", overrides, tmp_path / "eval"))
    for key in ("test/auroc", "test/pauc80", "test/recall", "test/specificity", "test_op/recall", "test_op/auroc"):
        assert trained[key] == pytest.approx(report[key], abs=1e-6), key
    _check_against_scikit_learn(model, root, tmp_path / "eval")
    # eval.py used the run's own split (stored in the checkpoint) ...
    run_split = pd.read_csv(tmp_path / "train" / "splits.csv", dtype=str).sort_values("image_id")
    eval_split = pd.read_csv(tmp_path / "eval" / "splits.csv", dtype=str).sort_values("image_id")
    assert run_split.reset_index(drop=True).equals(eval_split.reset_index(drop=True))
    # ... and refuses data carved differently, whose test split holds images the run trained or tuned on.
    reseeded = [*overrides, *data, "data.seed=1"]
    with pytest.raises(ValueError, match=r"\d+ of the \d+ test images were used to train or tune .*lesion_id groups"):
        evaluate(compose_config("eval", reseeded, tmp_path / "leak"))
    stored = torch.load(best, map_location="cpu", weights_only=True)["split_groups"]
    assert stored["column"] == "lesion_id" and len(stored["groups"]["test"]) == len(model.deployment.split_ids["test"])


def test_the_leak_guard_refuses_another_image_of_a_training_lesion(caplog):
    from types import SimpleNamespace

    from lesion.screening.evaluation import refuse_leaks, training_splits

    # One lesion, two photos with two ids: ISIC_1 trained on, ISIC_2 in another data config's test split.
    deployment = SimpleNamespace(
        split_ids={"train": ["ISIC_1", "ISIC_3"], "val": ["ISIC_4"], "test": ["ISIC_5"]},
        split_groups={"column": "lesion_id", "groups": {"train": ["L1", "L3"], "val": ["L4"], "test": ["L5"]}},
    )
    run = SimpleNamespace(deployment=deployment)
    splits = training_splits(run, "run.ckpt")
    assert splits[0].set_index("image_id")["lesion_id"].to_dict() == {
        "ISIC_1": "L1",
        "ISIC_3": "L3",
        "ISIC_4": "L4",
        "ISIC_5": "L5",
    }
    test = pd.DataFrame({"image_id": ["ISIC_2", "ISIC_5", "ISIC_6"], "lesion_id": ["L1", "L5", None]})
    with pytest.raises(ValueError, match=r"1 of the 3 test images .*0 by image id, 1 lesion_id groups shared.*ISIC_2"):
        refuse_leaks(test, splits, "run.ckpt")
    refuse_leaks(test.iloc[1:], splits, "run.ckpt")  # a test lesion and an ungrouped image are fine
    refuse_leaks(test.drop(columns="lesion_id"), splits, "run.ckpt")  # no group column: image ids only
    with pytest.raises(ValueError, match="1 by image id"):
        refuse_leaks(pd.DataFrame({"image_id": ["ISIC_4"], "lesion_id": ["L9"]}), splits, "run.ckpt")
    refuse_leaks(test, splits, "run.ckpt", own_split=True)  # the run's own split, crossing groups: a warning
    calibrated = pd.DataFrame({"image_id": ["ISIC_7"], "split": ["calibration"]})
    with pytest.raises(ValueError, match="1 of the 1 test images were used to train or tune"):
        refuse_leaks(pd.DataFrame({"image_id": ["ISIC_7"]}), [calibrated], "run.ckpt")  # calibrating counts too
    assert "1 of the 3 images of run.ckpt's own test split share a lesion or patient" in caplog.text


def _check_against_scikit_learn(model: LesionClassifier, root: Path, eval_dir: Path) -> None:
    """metrics.json's headline figures and the confusion table, recomputed from the test photos themselves (decoded and
    scored by `Screener`, as predict.py does) with scikit-learn and the official ISIC 2024 pAUC formula."""
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, roc_auc_score

    from lesion.serving.inference import Screener

    metrics = json.loads((eval_dir / "metrics.json").read_text())
    split = pd.read_csv(eval_dir / "splits.csv", dtype=str)
    ids = sorted(split.loc[split["split"] == "test", "image_id"])
    truth = pd.read_csv(root / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_GroundTruth.csv")
    names = list(model.hparams.class_names)
    labels = np.array([names.index(truth.set_index("image").loc[i].idxmax()) for i in ids])
    y = np.isin(labels, [names.index(c) for c in model.hparams.malignant]).astype(int)
    screener = Screener(model)
    files = [root / "ISIC2018_Task3_Training_Input" / f"{i}.jpg" for i in ids]
    p = np.array([r.p_malignant for r in screener.screen_files(files)])
    assert metrics["test/auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-5)
    # ISIC 2024's scorer: benign is the positive class of a partial AUC above 80 % sensitivity, McClish-rescaled back.
    max_fpr = 0.2
    scaled = roc_auc_score(1 - y, -p, max_fpr=max_fpr)
    pauc = 0.5 * max_fpr**2 + (max_fpr - 0.5 * max_fpr**2) / (1.0 - 0.5) * (scaled - 0.5)
    assert metrics["test/pauc80"] == pytest.approx(pauc, abs=1e-5)
    for prefix, threshold in (("test", 0.5), ("test_op", float(model.deployment.threshold))):
        tn, fp, fn, tp = confusion_matrix(y, p > threshold, labels=[0, 1]).ravel()
        assert [metrics[f"{prefix}/{k}"] for k in ("tp", "fn", "fp", "tn")] == [tp, fn, fp, tn], prefix
        assert metrics[f"{prefix}/recall"] == pytest.approx(tp / (tp + fn), abs=1e-6)
        assert metrics[f"{prefix}/specificity"] == pytest.approx(tn / (tn + fp), abs=1e-6)
    table = (eval_dir / "confusion_matrix.md").read_text()
    assert f"| **malignant** | {fn} | {tp} | {fn + tp} |" in table  # the stored threshold's section, last
    with torch.no_grad():
        logits = model(torch.stack([screener.tensor(screener.read(f.read_bytes(), str(f))) for f in files]))
    decided = model.diagnosis_logits(logits).argmax(1).numpy()
    assert metrics["test/balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, decided), abs=1e-6)
    low, high = metrics["test/balanced_accuracy_ci"]
    assert 0 <= low <= high <= 1


def test_calibration_figures_describe_calibrated_p_malignant():
    """ECE, NLL and Brier under test_calibration/ are those of P(malignant), checked against scikit-learn and a hand
    count; the 7-class top-label figures have their own names."""
    from sklearn.metrics import brier_score_loss, log_loss

    from lesion.screening.evaluation import screening_report
    from lesion.screening.predictions import Predictions

    lite = {"model_name": "tf_efficientnet_lite0", "pretrained": False}
    names = ["a", "b", "c", "d"]
    model = LesionClassifier(backbone=lite, class_names=names, malignant=["c", "d"])
    model.deployment.temperature.fill_(1.6)
    generator = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 4, (500,), generator=generator)
    logits = 2 * F.one_hot(labels, 4) + 1.5 * torch.randn(500, 4, generator=generator)
    test = Predictions([str(i) for i in range(500)], labels, logits, model.is_malignant(labels))
    report = screening_report(model, test, resamples=0, bins=10)
    y = test.y_malignant.numpy()
    for state, t in (("before", 1.0), ("after", 1.6)):
        p = (logits / t).softmax(-1)[:, 2:].sum(-1).double().numpy()
        assert report[f"test_calibration/brier_{state}"] == pytest.approx(brier_score_loss(y, p), abs=1e-9)
        assert report[f"test_calibration/nll_{state}"] == pytest.approx(log_loss(y, p), abs=1e-9)
        bins = np.minimum(np.ceil(p * 10).astype(int) - 1, 9)
        ece = sum(abs(p[bins == b].mean() - y[bins == b].mean()) * (bins == b).mean() for b in set(bins))
        assert report[f"test_calibration/ece_{state}"] == pytest.approx(ece, abs=1e-9)
    top = calibration_scores((logits / 1.6).softmax(-1), labels, 10)
    assert report["test_calibration_multiclass/ece_after"] == pytest.approx(top["ece"])


def test_external_benign_malignant_set_evaluates_a_7_class_checkpoint_through_p_malignant(tmp_path):
    from fakes import make_folder, make_isic2018
    from sklearn.metrics import roc_auc_score

    from lesion.models.loading import load_model
    from lesion.serving.inference import Screener

    root = make_isic2018(tmp_path / "isic2018", n=140)
    data = ["data=isic2018", f"data.root={root}", "data.task=diagnosis", "data.val_fraction=0.25"]
    data += ["data.test_fraction=0.25", "data.batch_size=8", "data.eval_batch_size=8"]
    train(compose_config("train", [o for o in TINY if not o.startswith("data.")] + data, tmp_path / "train"))
    best = json.loads((tmp_path / "train" / "metrics.json").read_text())["best_checkpoint"]
    external = make_folder(tmp_path / "clinic", per_class=12)
    overrides = [f"ckpt_path={best}", "data=folder", f"data.root={external}", "data.task=binary", "data.external=true"]
    overrides += ["bootstrap.resamples=20", "robustness.max_images=8", "fairness.min_positives=1"]
    report = evaluate(compose_config("eval", overrides, tmp_path / "eval"))
    # Every image is a test image, scored by the checkpoint's calibrated P(malignant) at its stored threshold.
    files = sorted(external.glob("*/*.jpg"))
    y = np.array([f.parent.name == "malignant" for f in files], dtype=int)
    model = load_model(best)
    p = np.array([r.p_malignant for r in Screener(model).screen_files(files)])
    assert report["test/tp"] + report["test/fn"] == 12 and report["test/tn"] + report["test/fp"] == 12
    assert report["test/auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-5)
    assert report["test_op/recall"] == pytest.approx(
        ((p > float(model.deployment.threshold)) & (y == 1)).sum() / 12, abs=1e-6
    )
    assert "test/balanced_accuracy" not in report and not (tmp_path / "eval" / "per_class.md").exists()
    table = (tmp_path / "eval" / "domain_shift.md").read_text()
    trained = json.loads((tmp_path / "train" / "metrics.json").read_text())
    assert report["in_domain/test/auroc"] == trained["test/auroc"] and f"{trained['test/auroc']:.3f}" in table
    assert (tmp_path / "eval" / "robustness.csv").is_file() and (tmp_path / "eval" / "fairness.csv").is_file()
    # Local recalibration: refit on a stratified half, figures on the other half only, a site copy of the checkpoint.
    from lesion.screening.recalibration import stratified_halves

    site_run = tmp_path / "site"
    refit = evaluate(compose_config("eval", [*overrides, "recalibrate.enabled=true"], site_run))
    assert refit["recalibration/refit_images"] == 12 and refit["recalibration/held_images"] == 12
    _, held = stratified_halves(torch.tensor(y), 0.5, 0)
    site = load_model(refit["site_checkpoint"])
    p_site = np.array([r.p_malignant for r in Screener(site).screen_files([files[i] for i in held.tolist()])])
    y_held = y[held.numpy()]
    called = p_site > float(site.deployment.threshold)
    assert refit["external_after/test_op/recall"] == pytest.approx((called & (y_held == 1)).sum() / y_held.sum())
    assert refit["external_after/test/auroc"] == pytest.approx(roc_auc_score(y_held, p_site), abs=1e-5)
    p_held = p[held.numpy()]  # before: the stored operating point on the same held half
    before = ((p_held > float(model.deployment.threshold)) & (y_held == 1)).sum() / y_held.sum()
    assert refit["external_before/test_op/recall"] == pytest.approx(before)
    assert (
        float(site.deployment.threshold) == refit["recalibration/threshold"]
        and site.deployment.operating_point["method"] == "lower_bound"
    )
    assert "refitted locally" in (site_run / "recalibration.md").read_text()
    # A checkpoint that only eval.py could calibrate (DDP, an old run) keeps its in-domain figures for the table.
    raw = torch.load(best, map_location="cpu", weights_only=False)
    raw["state_dict"]["deployment.calibrated"] = torch.tensor(False)
    (tmp_path / "moved" / "checkpoints").mkdir(parents=True)
    torch.save(raw, tmp_path / "moved" / "checkpoints" / "raw.ckpt")  # no run dir, no metrics.json beside it
    own = [f"ckpt_path={tmp_path / 'moved' / 'checkpoints' / 'raw.ckpt'}", "bootstrap.resamples=20"]
    own += ["robustness.enabled=false", "fairness.enabled=false"]
    calibrating = evaluate(compose_config("eval", own, tmp_path / "calibrating"))
    calibrated = json.loads((tmp_path / "calibrating" / "metrics.json").read_text())["calibrated_checkpoint"]
    again = evaluate(compose_config("eval", [f"ckpt_path={calibrated}", *overrides[1:]], tmp_path / "external2"))
    assert again["in_domain/test/auroc"] == calibrating["test/auroc"]
    assert again["in_domain/source"] == str(tmp_path / "calibrating" / "metrics.json")
    with pytest.raises(ValueError, match="add data.external=true"):
        evaluate(compose_config("eval", [f"ckpt_path={best}", "recalibrate.enabled=true"], tmp_path / "no"))


def test_binary_temperature_recovers_the_temperature_that_generated_the_labels():
    from lesion.screening.recalibration import fit_binary_temperature

    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(20000, 4, generator=generator)
    malignant = torch.tensor([True, True, False, False])
    p = (logits / 2.0).softmax(-1)[:, malignant].sum(-1)
    y = torch.bernoulli(p, generator=generator)
    assert fit_binary_temperature(logits, malignant, y) == pytest.approx(2.0, rel=0.05)


def test_platt_recovers_the_map_that_generated_the_labels_and_keeps_the_ranking():
    from lesion.stats.calibration import PLATT_IDENTITY, fit_platt, platt_scale

    generator = torch.Generator().manual_seed(0)
    z = 2 * torch.randn(20000, generator=generator, dtype=torch.float64)
    p = torch.sigmoid(z).float()  # the model's score: overconfident and shifted against the truth below
    y = torch.bernoulli(torch.sigmoid(0.6 * z - 0.8), generator=generator)
    a, b = fit_platt(p, y)
    assert a == pytest.approx(0.6, abs=0.03) and b == pytest.approx(-0.8, abs=0.05)
    mapped = platt_scale(p, (a, b))
    # Increasing: in the order of p the mapped scores never decrease (float32 may tie neighbours, nothing more).
    assert (mapped[p.argsort()].diff() >= 0).all() and mapped.dtype == torch.float64
    # A steep map of confident float32 scores keeps them apart (rounded back to float32 they would tie at 1.0).
    confident = torch.linspace(0.95, 0.9999, 50, dtype=torch.float32)
    steep = platt_scale(confident, (3.0, 1.0))
    assert len(set(steep.tolist())) == 50 and len(set(steep.float().tolist())) < 50
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y, mapped) == pytest.approx(roc_auc_score(y, p), abs=1e-5)
    assert platt_scale(p, PLATT_IDENTITY) is p  # the identity leaves scores bit for bit
    # No signal at all: no increasing map fits, and the scores are left as they are.
    assert fit_platt(p, 1 - torch.bernoulli(p.double(), generator=generator)) == PLATT_IDENTITY


def test_a_checkpoint_written_before_platt_loads_with_the_identity_map(tmp_path):
    run = tmp_path / "train"
    trained = train(compose_config("train", [*TINY, "trainer.max_epochs=1"], run))
    best = json.loads((run / "metrics.json").read_text())["best_checkpoint"]
    ckpt = torch.load(best, map_location="cpu", weights_only=False)
    assert ckpt["operating_point"]["calibrator"] == "platt"
    for name in ("temperature", "threshold", "calibrated"):  # the layout before Deployment: buffers on the module
        ckpt["state_dict"][name] = ckpt["state_dict"].pop(f"deployment.{name}")
    ckpt["state_dict"].pop("deployment.platt")  # and before the Platt map existed
    torch.save(ckpt, tmp_path / "old.ckpt")
    old = LesionClassifier.load_from_checkpoint(tmp_path / "old.ckpt")
    assert old.deployment.platt.tolist() == [1.0, 0.0] and float(old.deployment.threshold) == pytest.approx(
        trained["threshold"]
    )


@pytest.mark.parametrize(
    "edge, above, below",
    [(55, "very light", "light"), (41, "light", "intermediate"), (28, "intermediate", "tan"), (10, "tan", "brown"),
     (-30, "brown", "dark")],
)  # fmt: skip
def test_ita_bands_change_exactly_at_the_published_edges(edge, above, below):
    # Chardon et al. 1991 / Del Bino 2013: very light > 55 > light > 41 > intermediate > 28 > tan > 10 > brown > -30
    assert ita_category(edge + 0.01) == above and ita_category(edge - 0.01) == below


def test_the_lower_bound_is_certified_at_the_confidence_the_config_asks(tmp_path):
    from scipy.stats import beta

    # 40 oranges in val: enough positives that 0.6 and 0.95 need different numbers of them detected
    overrides = [*TINY, "data.num_val=80", "operating_point.confidence=0.6", "operating_point.target_sensitivity=0.8"]
    metrics = train(compose_config("train", overrides, tmp_path))
    n = metrics["operating_point/val_positives"]

    def needed(confidence: float) -> int:
        k = np.arange(1, n + 1)
        return int(np.nonzero(beta.ppf(1 - confidence, k, n - k + 1) >= 0.8)[0][0]) + 1

    assert n == 40 and needed(0.6) != needed(0.95)  # premise: the level changes the threshold
    assert metrics["operating_point/confidence"] == 0.6 and metrics["operating_point/checkpoints_compared"] == 1
    assert metrics["operating_point/val_detected"] == needed(0.6)
    written = pd.read_csv(tmp_path / "predictions.csv").query("split == 'val'")
    detected = int(((written["p_malignant"] > metrics["threshold"]) & (written["malignant"] == 1)).sum())
    assert detected == needed(0.6)  # the stored threshold detects exactly that many of val's oranges


def test_val_that_chose_the_epoch_certifies_at_the_bonferroni_level_and_a_calibration_split_does_not(tmp_path):
    overrides = [*TINY, "trainer.max_epochs=3", "data.num_val=16"]
    chose = train(compose_config("train", overrides, tmp_path / "val"))
    assert chose["operating_point/checkpoints_compared"] == 3
    assert chose["operating_point/confidence"] == pytest.approx(1 - 0.05 / 3)
    off = train(compose_config("train", [*overrides, "operating_point.correct_for_selection=false"], tmp_path / "off"))
    assert off["operating_point/confidence"] == 0.95
    carved = train(compose_config("train", [*overrides, "data.calibration_fraction=0.2"], tmp_path / "cal"))
    assert carved["operating_point/calibration_split"] == "calibration"
    assert carved["operating_point/confidence"] == 0.95 and carved["operating_point/checkpoints_compared"] == 1


def test_train_py_quality_and_calibrator_keys_reach_the_stored_gate_and_calibration(tmp_path):
    quality = ["quality.region=0.7", "quality.sharpness_percentile=5", "quality.exposure_percentile=90"]
    quality += ["quality.exposure_floor=0.6", "quality.ood_percentile=80", "quality.ood_components=3"]
    quality += ["quality.max_images=6", "quality.min_side=33", "operating_point.calibrator=temperature"]
    train(compose_config("train", [*TINY, "data.num_val=16", *quality], tmp_path))
    best = json.loads((tmp_path / "metrics.json").read_text())["best_checkpoint"]
    model = LesionClassifier.load_from_checkpoint(best, weights_only=True)
    gate = model.deployment.quality
    assert gate["region"] == 0.7 and gate["min_side"] == 33
    assert gate["percentiles"] == {"sharpness_percentile": 5, "exposure_percentile": 90, "ood_percentile": 80}
    assert gate["max_highlights"] >= 0.6 and gate["max_shadows"] >= 0.6  # the floor over the percentile
    assert gate["fitted_on"]["training_images"] == 6 and gate["feature_residual"]["components"] == 3
    assert tuple(model.deployment.platt.tolist()) == (1.0, 0.0)  # calibrator=temperature: no Platt map
    assert model.deployment.operating_point["calibrator"] == "temperature"
