"""ISIC 2024 (SLICE-3D) on the real thing: 50 real tiles through both Kaggle layouts, the train-only columns kept
from every model input, patient-grouped folds, the generator's schema against the real file, and one run on them."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, SHARED_ISIC2024, TINY, compose_config
from fakes import make_isic2024

from eval import evaluate
from lesion.data import build_datamodule
from lesion.data.isic2024 import COLUMNS, TEST_COLUMNS, TRAIN_ONLY
from lesion.data.readers import Hdf5Reader
from lesion.data.slice3d import slice3d_table, write_slice3d
from lesion.data.splits import crossing_groups
from lesion.models.backbones import backbone_data_config
from lesion.models.trees import TreeStack
from lesion.runs.oof import out_of_fold_table
from lesion.screening.scores import COLUMNS as SCORE_COLUMNS
from predict import run_predict
from train import train

real = pytest.mark.skipif(not SHARED_ISIC2024.is_dir(), reason=f"real ISIC 2024 sample not found at {SHARED_ISIC2024}")
REAL = [o for o in TINY if not o.startswith(("data.num_", "data.image_size"))]


def datamodule(root, **data):
    config = {"name": "isic2024", "root": str(root), "num_workers": 0, "neg_ratio": None} | data
    dm = build_datamodule(config, backbone_data_config("tf_efficientnet_lite0", input_size=64))
    dm.setup()
    return dm


def folder_layout(tmp_path):
    """The sample's train-image/image/ layout alone (no HDF5 beside it), linked rather than copied."""
    root = tmp_path / "folder_layout"
    (root / "train-image").mkdir(parents=True)
    (root / "train-metadata.csv").symlink_to(SHARED_ISIC2024 / "train-metadata.csv")
    (root / "train-image" / "image").symlink_to(SHARED_ISIC2024 / "train-image" / "image")
    return root


@real
def test_both_kaggle_layouts_read_every_real_tile_with_the_same_pixels(tmp_path):
    by_layout = {"hdf5": datamodule(SHARED_ISIC2024), "folder": datamodule(folder_layout(tmp_path))}
    ids = {name: sorted(pd.concat(dm.frames.values())["image_id"]) for name, dm in by_layout.items()}
    assert ids["hdf5"] == ids["folder"] and len(ids["hdf5"]) == 50
    assert isinstance(by_layout["hdf5"].reader(), Hdf5Reader)
    for image_id in ids["hdf5"]:
        a, b = (dm.reader()(image_id) for dm in by_layout.values())
        assert np.array_equal(a, b) and a.shape[0] == a.shape[1] and 89 <= a.shape[0] <= 171


@real
def test_the_real_files_train_only_columns_are_exactly_those_kept_from_every_model_input():
    real = pd.read_csv(SHARED_ISIC2024 / "train-metadata.csv")
    assert tuple(real.columns) == COLUMNS and len(COLUMNS) == 55
    assert set(real.columns) - set(TEST_COLUMNS) == set(TRAIN_ONLY)
    frame = pd.concat(datamodule(SHARED_ISIC2024).frames.values())
    assert set(frame.columns) - {"image_id", "label"} <= set(TEST_COLUMNS)
    assert not set(frame.columns) & (set(TRAIN_ONLY) - {"target"})
    labels = frame.set_index("image_id")["label"]
    assert (labels == real.set_index("isic_id")["target"].loc[labels.index]).all()


@real
def test_an_unknown_column_never_reaches_the_frame(tmp_path):
    root = folder_layout(tmp_path)
    table = pd.read_csv(SHARED_ISIC2024 / "train-metadata.csv")
    (root / "train-metadata.csv").unlink()
    table.assign(biopsy_result=table["target"]).to_csv(root / "train-metadata.csv", index=False)
    assert "biopsy_result" not in pd.concat(datamodule(root).frames.values()).columns


@real
def test_real_patients_never_straddle_folds_and_each_is_validated_once():
    folds = [datamodule(SHARED_ISIC2024, fold=fold) for fold in range(5)]
    for dm in folds:
        assert crossing_groups(dm.frames, "patient_id") == set()
    tests = {tuple(sorted(dm.frames["test"]["image_id"])) for dm in folds}
    assert len(tests) == 1  # one held-out test set, whatever the fold
    validated = [set(dm.frames["val"]["patient_id"]) for dm in folds]
    assert sum(map(len, validated)) == len(set().union(*validated))  # each patient in one val fold only
    everyone = set(pd.read_csv(SHARED_ISIC2024 / "train-metadata.csv")["patient_id"])
    assert set().union(*validated) | set(folds[0].frames["test"]["patient_id"]) == everyone


@real
def test_the_generator_writes_the_real_files_schema_column_by_column(tmp_path):
    real = pd.read_csv(SHARED_ISIC2024 / "train-metadata.csv")
    root = write_slice3d(tmp_path / "synthetic", slice3d_table(300, 30, 20, seed=1), folder=True)
    fake = pd.read_csv(root / "train-metadata.csv")
    assert list(fake.columns) == list(real.columns)
    for column in real.columns:
        if real[column].notna().any():
            assert fake[column].notna().any(), column
            numeric = pd.api.types.is_numeric_dtype(real[column])
            assert pd.api.types.is_numeric_dtype(fake[column].dropna()) == numeric, column
    for column in ("sex", "anatom_site_general", "image_type", "tbp_tile_type", "tbp_lv_location_simple"):
        assert set(fake[column].dropna()) <= set(real[column].dropna()) | _LOCATIONS, column
    for column in real.select_dtypes("float").columns:
        if column.startswith("tbp_lv_") and column != "tbp_lv_dnn_lesion_confidence":
            low, high = fake[column].quantile([0.01, 0.99])
            assert low <= real[column].median() <= high, column
    sides = [cv2.imread(str(p)).shape for p in sorted((root / "train-image" / "image").glob("*.jpg"))[:50]]
    real_sides = [cv2.imread(str(p)).shape for p in (SHARED_ISIC2024 / "train-image" / "image").glob("*.jpg")]
    lo, hi = min(s[0] for s in real_sides), max(s[0] for s in real_sides)
    assert all(h == w and lo <= h <= hi and c == 3 for h, w, c in sides)


_LOCATIONS = {"Torso Front", "Torso Back", "Left Arm", "Right Arm", "Left Leg", "Right Leg", "Head & Neck"}


@real
def test_one_training_step_on_the_real_tiles_then_eval_and_predict_score_them(tmp_path):
    run = tmp_path / "run"
    overrides = [*REAL, "data=isic2024", f"data.root={SHARED_ISIC2024}", "data.num_workers=0", "data.neg_ratio=3"]
    overrides += ["trainer.limit_train_batches=1", "operating_point.method=point"]
    metrics = train(compose_config("train", overrides, run))
    assert metrics["train_images"] == 4 and np.isfinite(metrics["test/auroc"])
    ckpt = json.loads((run / "metrics.json").read_text())["best_checkpoint"]
    report = evaluate(compose_config("eval", [f"ckpt_path={ckpt}", "bootstrap.resamples=20"], tmp_path / "eval"))
    test_ids = pd.read_csv(run / "splits.csv").query("split == 'test'")["image_id"]
    counted = sum(report[f"test/{c}"] for c in ("tp", "fp", "tn", "fn"))
    assert counted == len(test_ids) and np.isfinite(report["test/auroc"])
    photos = SHARED_ISIC2024 / "train-image" / "image"
    overrides = [f"ckpt_path={ckpt}", f"input={photos}", "quality.enabled=false", "gradcam=false"]
    run_predict(compose_config("predict", overrides, tmp_path / "predict"))
    table = pd.read_csv(tmp_path / "predict" / "predictions.csv")
    assert len(table) == 50 and table["error"].isna().all() and table["p_malignant"].between(0, 1).all()
    assert json.loads((tmp_path / "predict" / "predictions.json").read_text())["predictions"]


def test_a_fold_sweep_writes_every_training_images_out_of_fold_score_and_the_stack_reads_it(tmp_path):
    data = make_isic2024(tmp_path / "data", patients=24, per_patient=10)
    sweep = tmp_path / "sweep"
    command = [sys.executable, "train.py", "-m", "experiment=isic2024_oof", f"data.root={data}", "data.fold=0,1,2"]
    command += ["data.num_folds=3", "backbone.pretrained=false", "backbone.input_size=64", "trainer.max_epochs=1"]
    command += ["trainer.limit_train_batches=2", "data.num_workers=0", "data.batch_size=8", "data.neg_ratio=3"]
    command += ["callbacks.progress_bar=null", "operating_point.bootstrap_resamples=20", f"hydra.sweep.dir={sweep}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    table = pd.read_csv(sweep / "oof_scores.csv", dtype={"image_id": str}).set_index("image_id")
    metadata = pd.read_csv(data / "train-metadata.csv").set_index("isic_id")
    assert sorted(table.index) == sorted(metadata.index)  # every image once
    assert (table["y_malignant"] == metadata.loc[table.index, "target"]).all()
    for fold in range(3):
        splits = pd.read_csv(sweep / str(fold) / "splits.csv", dtype={"image_id": str}).set_index("image_id")
        validated = splits.index[splits["split"] == "val"]
        assert (table.loc[validated, "fold"] == fold).all()  # scored by the model that did not train on it
        assert (table.loc[validated, "split"] == "train").all()
        own = pd.read_csv(sweep / str(fold) / "scores.csv", dtype={"image_id": str}).set_index("image_id")
        test = own.index[own["split"] == "test"]
        np.testing.assert_allclose(table.loc[test, f"score_fold{fold}"], own.loc[test, "image_score"])
    test = table[table["split"] == "test"]
    np.testing.assert_allclose(test["image_score"], test[[f"score_fold{k}" for k in range(3)]].mean(axis=1))
    assert table["image_ud"].notna().mean() > 0.8  # patients with three or more lesions in a split have one
    run = tmp_path / "stack"
    command = [sys.executable, "stack.py", f"data.root={data}", f"scores={sweep / 'oof_scores.csv'}", "rounds=30"]
    done = subprocess.run(command + ["bootstrap.resamples=20", f"hydra.run.dir={run}"], cwd=ROOT, capture_output=True)
    assert done.returncode == 0, done.stderr[-3000:]
    stack = TreeStack.load(run / "stack.json")
    assert {"image_score", "image_ugly_duckling", "tbp_lv_H_pz", "patient_lesions"} <= set(stack.columns)
    assert not set(stack.columns) & set(TRAIN_ONLY)


def test_the_out_of_fold_table_refuses_a_missing_or_repeated_fold(tmp_path):
    for k in (0, 2, 2):
        job = tmp_path / f"job{k}_{len(list(tmp_path.iterdir()))}"
        job.mkdir()
        rows = [(f"v{k}", "val", k, 0, 0.1, np.nan), ("t", "test", k, 1, 0.5, np.nan)]
        pd.DataFrame(rows, columns=list(SCORE_COLUMNS)).to_csv(job / "scores.csv", index=False)
    jobs = sorted(tmp_path.iterdir())
    with pytest.raises(ValueError, match="fold 2 was scored by two jobs"):
        out_of_fold_table(jobs, 3)
    with pytest.raises(ValueError, match=r"no scores.csv for fold\(s\) \[1\] of 3.*data.fold=1"):
        out_of_fold_table(jobs[:2], 3)
