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
    merged = splits.merge(groups, left_on="image_id", right_on="image")
    assert len(merged) == 10015
    assert crossing_groups({s: f for s, f in merged.groupby("split")}, "lesion_id") == set()
    assert json.loads((tmp_path / "metrics.json").read_text())["test/auroc"] == pytest.approx(metrics["test/auroc"])
