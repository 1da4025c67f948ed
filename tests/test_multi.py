"""Several sources in one run (data=multi): per-source grouped splits, one class list, sampling shares, and figures
per source and modality that add up to the pooled ones."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import compose_config
from fakes import make_isic2018, make_pad

from lesion.data import SOURCE_KEYS, build_datamodule
from lesion.data.splits import crossing_groups
from lesion.stats.subgroups import subgroup_report
from train import train

DATA_CONFIG = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear"}
SMALL = ["data.batch_size=8", "data.eval_batch_size=8", "data.num_workers=0", "backbone.input_size=32"]


@pytest.fixture
def roots(tmp_path):
    return make_isic2018(tmp_path / "isic", n=140), make_pad(tmp_path / "pad", patients=40)


def multi_config(roots, tmp_path, *overrides: str) -> dict:
    isic, pad = roots
    sources = [f"data.sources.isic2018.root={isic}", f"data.sources.pad_ufes_20.root={pad}"]
    return compose_config("train", ["data=multi", *sources, *SMALL, *overrides], tmp_path)


def test_each_source_keeps_its_layout_and_grouped_split_under_one_class_list(roots, tmp_path):
    config = multi_config(roots, tmp_path)
    dm = build_datamodule(config["data"], DATA_CONFIG)
    dm.setup()
    assert dm.classes == ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC") and dm.malignant == ("MEL", "BCC", "AKIEC")
    frame = pd.concat([f.assign(split=s) for s, f in dm.frames.items()])
    pad = frame[frame["source"] == "pad_ufes_20"]
    assert set(pad["modality"]) == {"clinical"} and set(frame.loc[frame.source == "isic2018", "modality"]) == {
        "dermoscopy"
    }
    # PAD's diagnoses map as the class_map says; ACK and SCC are AKIEC, NEV is NV, SEK is BKL
    names = np.array(dm.classes)[pad["label"].to_numpy(int)]
    expected = (
        pad["diagnosis"].map({"ACK": "AKIEC", "SCC": "AKIEC", "NEV": "NV", "SEK": "BKL"}).fillna(pad["diagnosis"])
    )
    assert (names == expected.to_numpy()).all()
    # Each source carves its own split, group-disjoint (lesions for ISIC 2018, patients for PAD), with every split
    for key, column in (("isic2018", "lesion_id"), ("pad_ufes_20", "patient_id")):
        part = {s: f[f["source"] == key] for s, f in dm.frames.items()}
        assert all(len(f) for f in part.values()) and crossing_groups(part, column) == set()
    # ... the same split as the source alone carves
    block = {k: v for k, v in config["data"]["sources"]["pad_ufes_20"].items() if k not in SOURCE_KEYS}
    alone = build_datamodule(block, DATA_CONFIG)
    alone.setup()
    for split in ("train", "val", "test"):
        assert set(alone.frames[split]["image_id"]) == set(
            dm.frames[split].query("source == 'pad_ufes_20'")["image_id"]
        )
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape[1:] == (3, 32, 32)


def test_source_weights_set_each_sources_share_of_the_draws(roots, tmp_path):
    dm = build_datamodule(multi_config(roots, tmp_path, "data.sources.pad_ufes_20.weight=0.5")["data"], DATA_CONFIG)
    shares = dm.source_shares()
    assert shares == pytest.approx({"pad_ufes_20": 0.5, "isic2018": 0.5})
    loader = dm.train_dataloader()
    sources = dm.frames["train"]["source"].to_numpy()
    drawn = np.concatenate([sources[[i for i, _, _ in loader.sampler]] for _ in range(20)])
    assert abs((drawn == "pad_ufes_20").mean() - 0.5) < 0.05  # far from the PAD share of the images (~0.3)
    assert (sources == "pad_ufes_20").mean() < 0.4
    natural = build_datamodule(
        multi_config(roots, tmp_path, "data.sources.pad_ufes_20.weight=null")["data"], DATA_CONFIG
    )
    assert natural.source_shares()["pad_ufes_20"] == pytest.approx((sources == "pad_ufes_20").mean())
    with pytest.raises(ValueError, match="summing to at most 1"):
        build_datamodule(
            multi_config(roots, tmp_path, "data.sources.pad_ufes_20.weight=1.5")["data"], DATA_CONFIG
        ).source_shares()


def test_unmapped_classes_clashing_malignancy_and_shared_ids_are_clear_errors(roots, tmp_path):
    unmapped = r"data.sources.pad_ufes_20: classes \['ACK', 'NEV', 'SCC', 'SEK'\] .*class_map"
    with pytest.raises(ValueError, match=unmapped):
        build_datamodule(multi_config(roots, tmp_path, "data.sources.pad_ufes_20.class_map=null")["data"], DATA_CONFIG)
    with pytest.raises(ValueError, match="pad_ufes_20's ACK \\(malignant\\).* all map to NV"):
        clash = "data.sources.pad_ufes_20.class_map.ACK=NV"
        build_datamodule(multi_config(roots, tmp_path, clash)["data"], DATA_CONFIG)
    isic, _ = roots
    twice = multi_config(roots, tmp_path, "data.sources.pad_ufes_20.root=" + str(isic))["data"]
    twice["sources"]["pad_ufes_20"] = dict(twice["sources"]["isic2018"])
    dm = build_datamodule(twice, DATA_CONFIG)
    with pytest.raises(ValueError, match="image ids occur in more than one source: ISIC_"):
        dm.setup()


def test_binary_multi_source_maps_each_sources_malignant_classes(roots, tmp_path):
    config = multi_config(roots, tmp_path, "data.task=binary")
    dm = build_datamodule(config["data"], DATA_CONFIG)
    dm.setup()
    frame = pd.concat(dm.frames.values())
    pad = frame[frame["source"] == "pad_ufes_20"]
    assert dm.classes == ("benign", "malignant")
    assert (pad["label"] == pad["diagnosis"].isin(["ACK", "BCC", "MEL", "SCC"]).astype(int)).all()


def test_figures_per_source_add_up_to_the_pooled_ones():
    rng = np.random.default_rng(0)
    y = torch.from_numpy(rng.integers(0, 2, 300))
    p = (0.3 * y + 0.7 * torch.from_numpy(rng.random(300))).float()
    frame = pd.DataFrame({"source": rng.choice(["a", "b", "c"], 300), "modality": rng.choice(["x", "y"], 300)})
    report = subgroup_report(p, y, 0.5, frame, "test", resamples=50)
    for column, parts in (("source", "abc"), ("modality", "xy")):
        for count in ("tp", "fn", "fp", "tn", "images", "malignant"):
            pooled = {"tp": ((p >= 0.5) & (y == 1)).sum(), "fn": ((p < 0.5) & (y == 1)).sum()}
            pooled |= {"fp": ((p >= 0.5) & (y == 0)).sum(), "tn": ((p < 0.5) & (y == 0)).sum()}
            pooled |= {"images": len(y), "malignant": y.sum()}
            assert sum(report[f"test_by_{column}/{k}/{count}"] for k in parts) == int(pooled[count])
    from sklearn.metrics import roc_auc_score

    rows = torch.from_numpy((frame["source"] == "b").to_numpy().copy())
    assert report["test_by_source/b/auroc"] == pytest.approx(roc_auc_score(y[rows], p[rows]), abs=1e-6)
    low, high = report["test_by_source/b/auroc_ci"]
    assert low <= report["test_by_source/b/auroc"] <= high


def test_train_reports_val_and_test_figures_per_source(roots, tmp_path):
    overrides = ["backbone.pretrained=false", "trainer.max_epochs=1", "callbacks.progress_bar=null"]
    overrides += [
        "operating_point.bootstrap_resamples=20",
        "trainer.enable_model_summary=false",
        "quality.enabled=false",
    ]
    metrics = train(multi_config(roots, tmp_path, *overrides))
    written = json.loads((tmp_path / "metrics.json").read_text())
    for split in ("val", "test"):
        for key in ("isic2018", "pad_ufes_20"):
            assert written[f"{split}_by_source/{key}/images"] > 0
        total = sum(written[f"{split}_by_source/{k}/tp"] for k in ("isic2018", "pad_ufes_20"))
        assert total == written[f"{split}_by_modality/dermoscopy/tp"] + written[f"{split}_by_modality/clinical/tp"]
    assert sum(written[f"test_by_source/{k}/tp"] for k in ("isic2018", "pad_ufes_20")) == metrics["test_op/tp"]
    splits = pd.read_csv(tmp_path / "splits.csv")
    assert splits["image_id"].str.startswith("images/PAT_").any()  # reusable as data.split_file


def test_the_quality_gate_samples_every_source_equally():
    from lesion.screening.quality import gate_sample

    frame = pd.DataFrame({"image_id": [f"d{i}" for i in range(900)] + [f"p{i}" for i in range(30)]})
    frame["source"] = ["dermoscopy"] * 900 + ["phone"] * 30
    ids = gate_sample(frame, 100)
    assert sum(i.startswith("p") for i in ids) == 30 and sum(i.startswith("d") for i in ids) == 50
    assert len(gate_sample(frame.drop(columns="source"), 100)) == 100


def test_a_source_is_added_or_left_out_from_the_command_line(roots, tmp_path):
    from fakes import make_folder

    clinic = make_folder(tmp_path / "clinic", per_class=6)
    added = multi_config(roots, tmp_path, "+data@data.sources.clinic=folder", f"data.sources.clinic.root={clinic}")
    added["data"]["sources"]["clinic"] |= {"task": "binary", "class_map": {"benign": "NV", "malignant": "MEL"}}
    added["data"]["sources"]["clinic"] |= {"val_fraction": 0.25, "test_fraction": 0.25}
    dm = build_datamodule(added["data"], DATA_CONFIG)
    dm.setup()
    assert set(pd.concat(dm.frames.values())["source"]) == {"isic2018", "pad_ufes_20", "clinic"}
    alone = build_datamodule(multi_config(roots, tmp_path, "data.sources.pad_ufes_20=null")["data"], DATA_CONFIG)
    alone.setup()
    assert set(pd.concat(alone.frames.values())["source"]) == {"isic2018"}


def test_the_in_domain_vs_external_table_has_a_column_per_source():
    from lesion.screening.reports import domain_shift_table

    external = {"threshold": 0.3, "test/auroc": 0.8, "test_op/recall": 0.7, "test_op/specificity": 0.6}
    external |= {"test_by_modality/clinical/auroc": 0.71, "test_by_modality/clinical/auroc_ci": [0.6, 0.8]}
    external |= {"test_by_modality/dermoscopy/auroc": 0.85, "test_by_modality/dermoscopy/recall": 0.9}
    table = domain_shift_table({"test/auroc": 0.9, "source": "x"}, external)
    header = next(line for line in table.splitlines() if line.startswith("| metric"))
    parts = "external: clinical (modality) | external: dermoscopy (modality)"
    assert header == f"| metric | in-domain test | external | {parts} |"
    auroc = next(line for line in table.splitlines() if line.startswith("| AUROC"))
    assert auroc == "| AUROC | 0.900 | 0.800 | 0.710 (0.600-0.800) | 0.850 |"


def test_the_runs_calibration_split_is_carved_from_each_source_and_survives_its_split_file(roots, tmp_path):
    # experiment=isic2018_cpu_best sets data.calibration_fraction; with data=multi every source gives its share
    config = multi_config(roots, tmp_path, "data.calibration_fraction=0.1")
    dm = build_datamodule(config["data"], DATA_CONFIG)
    dm.setup()
    assert dm.calibration_split == "calibration"
    calibration = dm.frames["calibration"]
    assert set(calibration["source"]) == {"isic2018", "pad_ufes_20"} and calibration["label"].nunique() > 1
    for key, column in (("isic2018", "lesion_id"), ("pad_ufes_20", "patient_id")):
        part = {s: f[f["source"] == key] for s, f in dm.frames.items()}
        assert crossing_groups(part, column) == set()  # no lesion or patient on two sides, calibration included
    dm.save_splits(tmp_path / "splits.csv")
    again = build_datamodule(
        multi_config(roots, tmp_path, "data.calibration_fraction=0.1", f"data.split_file={tmp_path / 'splits.csv'}")[
            "data"
        ],
        DATA_CONFIG,
    )
    again.setup()
    assert set(again.frames["calibration"]["image_id"]) == set(calibration["image_id"])
