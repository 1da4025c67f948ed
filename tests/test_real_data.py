"""Each datamodule through train.py (fast_dev_run), and one short epoch on the real ISIC 2018 data."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from conftest import SHARED_ISIC2018, TINY, compose_config
from fakes import make_folder, make_ham10000, make_isic2018, make_isic2024

from lesion.data.splits import crossing_groups
from train import train

FIXTURES = {
    "isic2018": (make_isic2018, []),
    "ham10000": (make_ham10000, []),
    "isic2024": (make_isic2024, ["data.neg_ratio=3"]),
    "folder": (make_folder, []),
}
REAL = [o for o in TINY if not o.startswith(("data.num_", "data.image_size"))]


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fast_dev_run_per_datamodule(name, tmp_path):
    make, extra = FIXTURES[name]
    root = make(tmp_path / "data")
    overrides = [*REAL, f"data={name}", f"data.root={root}", "data.num_workers=0", "trainer.fast_dev_run=true", *extra]
    metrics = train(compose_config("train", overrides, tmp_path))
    assert "test/auroc" in metrics
    splits = pd.read_csv(tmp_path / "splits.csv")
    assert set(splits["split"]) == {"train", "val", "test"}


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_ISIC2018.is_dir(), reason=f"real ISIC 2018 data not found at {SHARED_ISIC2018}")
def test_one_short_epoch_on_real_isic2018(tmp_path):
    overrides = [
        *REAL,
        "data=isic2018",
        f"data.root={SHARED_ISIC2018}",
        "data.batch_size=16",
        "data.eval_batch_size=64",
        "data.num_workers=2",
        "backbone.pretrained=true",
        "trainer.limit_train_batches=20",
        "trainer.limit_val_batches=6",
        "trainer.limit_test_batches=6",
    ]
    metrics = train(compose_config("train", overrides, tmp_path))
    for key in ("test/loss", "test/auroc", "test/pauc80", "test/recall", "test/specificity"):
        assert math.isfinite(metrics[key]), key
    splits = pd.read_csv(tmp_path / "splits.csv")
    groups = pd.read_csv(SHARED_ISIC2018 / "ISIC2018_Task3_Training_LesionGroupings.csv")
    merged = splits.merge(groups, left_on="image_id", right_on="image", suffixes=("", "_official"))
    assert len(merged) == 10015 and (merged["lesion_id"] == merged["lesion_id_official"]).all()  # splits.csv's lesions
    assert crossing_groups({s: f for s, f in merged.groupby("split")}, "lesion_id") == set()
    assert json.loads((tmp_path / "metrics.json").read_text())["test/auroc"] == pytest.approx(metrics["test/auroc"])


@pytest.mark.skipif(not SHARED_ISIC2018.is_dir(), reason=f"real ISIC 2018 data not found at {SHARED_ISIC2018}")
def test_quality_gate_on_real_lesions_passes_clean_ones_and_refuses_degraded_ones():
    import cv2
    import numpy as np
    import torch

    from lesion.data.readers import FileReader
    from lesion.data.transforms import LesionTransforms
    from lesion.serving.quality import QualityGate
    from lesion.stats.quality import fit_quality

    paths = sorted((SHARED_ISIC2018 / "ISIC2018_Task3_Training_Input").glob("*.jpg"))
    rng = np.random.default_rng(0)
    chosen = rng.choice(len(paths), 600, replace=False)
    read = FileReader({p.stem: str(p) for p in paths})
    fit_ids, held_ids = [paths[i].stem for i in chosen[:400]], [paths[i].stem for i in chosen[400:]]
    to_input = LesionTransforms({"input_size": [3, 150, 200], "mean": [0.5] * 3, "std": [0.5] * 3}).to_input_size
    settings = {"min_side": 100, "sharpness_percentile": 1.0, "exposure_percentile": 99.5, "exposure_floor": 0.05}
    settings["ood_percentile"] = 99.0
    thresholds = fit_quality((read(i) for i in fit_ids), to_input, torch.zeros(4, 2), settings)
    gate = QualityGate(thresholds, to_input, 100)
    held = [read(i) for i in held_ids]
    refused = [gate.check_image(im) for im in held]
    assert sum(r is not None for r in refused) <= 0.05 * len(held)  # clean lesions pass (README: the measured rate)
    degraded = {
        "blurred": [cv2.GaussianBlur(im, (0, 0), 3) for im in held[:50]],
        "underexposed": [(im * 0.08).astype(np.uint8) for im in held[:50]],
        "too_small": [cv2.resize(im, (40, 30), interpolation=cv2.INTER_AREA) for im in held[:50]],
        "featureless": [np.full_like(im, im.reshape(-1, 3).mean(0).astype(np.uint8)) for im in held[:50]],
    }
    for reason, images in degraded.items():
        got = [gate.check_image(im) for im in images]
        right = sum(g is not None and g[0] == reason for g in got)
        assert right >= 0.9 * len(images), (reason, right, [g[0] for g in got if g][:10])
