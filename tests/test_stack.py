"""The tabular stack on a synthetic SLICE-3D whose answer is planted: it recovers the image, tabular and
patient-relative signal, never reads the leak, and stack.py writes a stack that scores new lesions as it scored
them; the patient figures against hand-computed values."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, compose_config
from sklearn.metrics import roc_auc_score

from lesion.data.isic2024 import TEST_COLUMNS, TRAIN_ONLY
from lesion.data.slice3d import simulated_scores, slice3d_table
from lesion.data.tabular import feature_columns, patient_relative, ugly_duckling
from lesion.models.trees import TreeStack
from lesion.screening.stacking import ablation, fit_stack, join, stack_scores
from lesion.stats.metrics import partial_auroc
from lesion.stats.patients import paired_difference, patient_figures, pauc80, top_k_sensitivity


def settings(tmp_path, *overrides) -> dict:
    return compose_config("stack", ["data.root=unused", "scores=unused", "rounds=150", *overrides], tmp_path)


def stacked(table: pd.DataFrame, config: dict) -> tuple[pd.DataFrame, dict]:
    """The data=isic2024 frame of a generated table (its test columns only, as the datamodule reads it) joined with
    the scores an image model reading the planted image signal would give."""
    frame = table[list(TEST_COLUMNS)].rename(columns={"isic_id": "image_id"}).assign(label=table["target"])
    joined = join(frame, simulated_scores(table), "patient_id")
    return joined, fit_stack(joined, config, TRAIN_ONLY)


def test_the_stack_recovers_what_was_planted_and_patient_context_adds_only_what_is_there(tmp_path):
    config = settings(tmp_path)
    gains = {}
    for relative in (1.0, 0.0):
        table = slice3d_table(6000, 150, 150, seed=3, signal={"relative": relative, "image": 2.0})
        joined, fitted = stacked(table, config)
        rows = ablation(joined, config, fitted, resamples=0).set_index("variant")["oof/auroc"]
        gains[relative] = rows["+ patient context"] - rows["trees + image score"]
        if relative:
            full = rows["+ ugly duckling"]
            assert full > rows["image score alone"] + 0.05  # the trees add the tabular signal to the image's
            assert full > rows["trees without the image score"] + 0.03  # and the image adds its own
    assert gains[1.0] > 0.025  # the hue and texture planted relative to each patient's own lesions
    assert gains[0.0] < 0.015  # nothing planted there: no gain to speak of


def test_the_leak_column_never_reaches_the_trees(tmp_path):
    config = settings(tmp_path, "ablation=false")
    logits = []
    for leak in (0.0, 6.0):  # the same lesions; only the train-only confidence column tells the label or not
        table = slice3d_table(3000, 80, 80, seed=4, signal={"leak": leak})
        assert (roc_auc_score(table["target"], -table["tbp_lv_dnn_lesion_confidence"]) > 0.99) == bool(leak)
        joined, fitted = stacked(table, config)
        assert not set(fitted["stack"].columns) & set(TRAIN_ONLY)
        logits.append(fitted["logits"])
    np.testing.assert_array_equal(logits[0], logits[1])
    with pytest.raises(ValueError, match="tbp_lv_dnn_lesion_confidence.*only the training metadata"):
        feature_columns(joined, ["age_approx", "tbp_lv_dnn_lesion_confidence"], TRAIN_ONLY)


def test_stack_py_writes_a_stack_that_scores_new_lesions_as_it_scored_them(tmp_path):
    table = slice3d_table(2000, 60, 60, seed=5)
    data = tmp_path / "data"
    data.mkdir()
    table.drop(columns="image_signal").to_csv(data / "train-metadata.csv", index=False)
    simulated_scores(table).to_csv(tmp_path / "oof_scores.csv", index=False)
    out = tmp_path / "run"
    command = [sys.executable, "stack.py", f"data.root={data}", f"scores={tmp_path / 'oof_scores.csv'}"]
    command += ["rounds=60", "bootstrap.resamples=30", f"hydra.run.dir={out}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("stack.json", "stack_scores.csv", "metrics.json", "ablation.md", "ablation.csv", "importance.png"):
        assert (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text())
    low, high = metrics["test/pauc80_ci"]
    assert low <= metrics["test/pauc80"] <= high and metrics["oof/pauc80"] > 0.05
    assert metrics["oof/recall"] >= 0.8  # the lower-bound rule's threshold, chosen on these out-of-fold scores
    assert "+ ugly duckling" in (out / "ablation.md").read_text()
    written = pd.read_csv(out / "stack_scores.csv", dtype={"image_id": str})
    stack = TreeStack.load(out / "stack.json")
    frame = table[list(TEST_COLUMNS)].rename(columns={"isic_id": "image_id"}).assign(label=table["target"])
    test = join(frame, simulated_scores(table), "patient_id").query("split == 'test'").reset_index(drop=True)
    again = stack_scores(stack, test)
    expected = written.set_index("image_id").loc[test["image_id"], "p_malignant"].to_numpy()
    np.testing.assert_allclose(again, expected, rtol=1e-6)
    referred = written["decision"] == "refer"
    assert (referred == (written["p_malignant"] > stack.deployment["threshold"])).all()


def test_a_scores_table_without_its_columns_is_refused_naming_them(tmp_path):
    (tmp_path / "scores.csv").write_text("image_id,score\nISIC_1,0.3\n")
    from lesion.screening.stacking import read_scores

    with pytest.raises(ValueError, match=r"lacks \['split', 'y_malignant'\].*isic2024_oof"):
        read_scores(tmp_path / "scores.csv")


def test_top15_sensitivity_counts_the_malignant_lesions_among_each_patients_top_15():
    # Patient a: 20 lesions, malignant at score ranks 1 and 16; patient b: 3 lesions, malignant at rank 3.
    scores = np.r_[np.arange(20, 0, -1), [3, 2, 1]].astype(float)
    target = np.zeros(23, int)
    target[[0, 15, 22]] = 1
    groups = np.array(["a"] * 20 + ["b"] * 3)
    assert top_k_sensitivity(scores, target, groups, 15) == pytest.approx(2 / 3)
    assert top_k_sensitivity(scores, target, groups, 16) == 1.0


def test_patient_figures_agree_with_the_references_and_resample_patients():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 10)
    target = (rng.random(400) < 0.1).astype(int)
    target[:2] = 1
    scores = target + rng.normal(0, 1, 400)
    import torch

    assert patient_figures(scores, target, groups, 0)["auroc"] == pytest.approx(roc_auc_score(target, scores))
    assert pauc80(scores, target) == pytest.approx(float(partial_auroc(torch.tensor(scores), torch.tensor(target))))
    figures = patient_figures(scores, target, groups, resamples=200)
    for name in ("pauc80", "auroc", "top15_sensitivity"):
        low, high = figures[f"{name}_ci"]
        assert low <= figures[name] <= high
    # A patient's lesions that share one score move together: resampling patients must widen the interval over
    # what resampling lesions gives (10 lesions per patient, all alike).
    shared = np.repeat(rng.normal(0, 1, 40), 10) + np.repeat(target.reshape(40, 10).max(1), 10)
    by_patient = patient_figures(shared, np.repeat(target.reshape(40, 10).max(1), 10), groups, resamples=300)
    by_lesion = patient_figures(shared, np.repeat(target.reshape(40, 10).max(1), 10), np.arange(400), resamples=300)
    assert np.diff(by_patient["auroc_ci"])[0] > 2 * np.diff(by_lesion["auroc_ci"])[0]
    same = paired_difference(scores, scores, target, groups, resamples=50)
    assert same["difference"] == 0 and same["ci"] == [0.0, 0.0]


def test_patient_relative_features_and_the_ugly_duckling_by_hand():
    numeric = pd.DataFrame({"h": [1.0, 2.0, 3.0, 10.0, 10.0]})
    groups = pd.Series(["a", "a", "a", "b", "c"])
    rel = patient_relative(numeric, groups)
    np.testing.assert_allclose(rel["h_pz"][:3], [-1, 0, 1])
    np.testing.assert_allclose(rel["h_prank"][:3], [1 / 3, 2 / 3, 1])
    assert rel["h_pz"][3:].isna().all() and list(rel["patient_lesions"]) == [3, 3, 3, 1, 1]
    rng = np.random.default_rng(1)
    vectors = rng.normal(0, 1, (12, 4))
    vectors[5] += 6  # patient 0's odd one out
    ud = ugly_duckling(vectors, np.array([0] * 8 + [1] * 2 + [2] * 2))
    assert np.nanargmax(ud[:8]) == 5 and np.isnan(ud[8:]).all()  # fewer than three lesions: no "others" to compare


def test_a_users_own_csv_metadata_feeds_the_stack_and_its_label_column_never_does(tmp_path):
    # A clinic's CSV (the csv layout) where a patient's age and a "lesion grew" flag carry the signal the image score
    # lacks; the stack is fitted on val and measured on test, as with a run's scores.csv.
    rng = np.random.default_rng(7)
    n = 600
    y = (rng.random(n) < 0.2).astype(int)
    table = pd.DataFrame({"image": [f"img/{i}.jpg" for i in range(n)], "patient": [f"p{i // 3}" for i in range(n)]})
    table["dx"] = np.where(y == 1, "melanoma", "nevus")
    table["age"] = 40 + 25 * y + rng.normal(0, 8, n)
    table["grew"] = np.where(rng.random(n) < 0.3 + 0.5 * y, "yes", "no")
    table.to_csv(tmp_path / "clinic.csv", index=False)
    scores = pd.DataFrame({"image_id": table["image"].str.removesuffix(".jpg")})  # the csv layout's image ids
    scores["split"] = np.where(np.arange(n) < 420, "val", "test")
    scores["y_malignant"], scores["image_score"] = y, 0.5 * y + rng.normal(0, 1, n)
    scores.to_csv(tmp_path / "scores.csv", index=False)
    data = ["data=csv", f"data.root={tmp_path}", "data.csv=clinic.csv", "data.label_column=dx"]
    data += ["data.malignant=[melanoma]", "data.group_column=patient", f"scores={tmp_path / 'scores.csv'}"]
    config = compose_config("stack", data + ["features=[age,grew]", "rounds=100", "bootstrap.resamples=50"], tmp_path)
    config["trees"]["min_data_in_leaf"] = 10
    from stack import run_stack

    metrics = run_stack(config)
    image = pd.read_csv(tmp_path / "scores.csv").query("split == 'test'")
    assert metrics["test/auroc"] > roc_auc_score(image["y_malignant"], image["image_score"]) + 0.1
    assert metrics["test_lesions"] == 180 and metrics["fitted_lesions"] == 420
    for label in ("dx", "diagnosis"):  # the user's label column, and the frame's copy of it
        config["features"] = ["age", label]
        with pytest.raises(ValueError, match=rf"\['{label}'\]: only the training metadata"):
            run_stack(config)
