"""python adapt.py ckpt_path=<trained .ckpt> data=pad_ufes_20 data.root=<site photos> [strategy=last_blocks|head|...]"""

from __future__ import annotations

import json
import logging
from datetime import date
from pathlib import Path

import hydra
import lightning as L
import pandas as pd
from omegaconf import DictConfig

from lesion.data import build_datamodule
from lesion.models.adaptation import Strategy
from lesion.models.loading import load_model
from lesion.runs.allocator import retain_freed_memory
from lesion.runs.config import to_plain
from lesion.screening.checkpoints import in_domain_figures, in_domain_metrics, save_adapted
from lesion.screening.evaluation import refuse_leaks, training_splits
from lesion.serving.adaptation import Adapter, adaptation_table, local_splits, read_local

log = logging.getLogger("lesion")


def adapt(config: dict) -> dict:
    """Adapt a checkpoint to a site's labelled photos; writes site.ckpt, adaptation.md, metrics.json and splits.csv
    (the local parts) to the run dir and returns the figures."""
    retain_freed_memory(config["allocator"]["retain_mb"])
    L.seed_everything(config["seed"], workers=True)
    ckpt = config["ckpt_path"]
    if isinstance(ckpt, list):
        raise ValueError("adapt.py takes one checkpoint (ckpt_path=...), not a list")
    model = load_model(ckpt)
    out = Path(config["paths"]["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    data = dict(config["data"]) | {"transforms": dict(model.deployment.transforms)}
    if data.get("external"):
        raise ValueError("data.external=true makes every photo a test photo: adapt.py carves its own parts, drop it")
    datamodule = build_datamodule(data, model.data_config)
    datamodule.setup()
    every = pd.concat(datamodule.frames.values(), ignore_index=True)
    refuse_leaks(every, training_splits(model, ckpt), ckpt)  # a site's photos must be new to the source model
    parts = {name: read_local(datamodule, split, model) for name, split in PARTS.items()}
    counts = {name: photos.counts() for name, photos in parts.items()}
    log.info("local photos: %s", counts)
    op, boot = config["operating_point"], config["bootstrap"]
    adapter = Adapter(model, Strategy(**config["strategy"]), config["folds"], config["seed"])
    site, info = adapter.fit_site(
        parts["fine_tune"], parts["calibration"], op["target_sensitivity"], op["confidence"], config["quality"]
    )
    before = adapter.report(model, parts["test"], boot["resamples"], boot["level"])
    after = adapter.report(site, parts["test"], boot["resamples"], boot["level"])
    (out / "adaptation.md").write_text(adaptation_table(before, after, info, counts))
    local_splits(parts).to_csv(out / "splits.csv", index=False)
    adaptation = info | {
        "source_checkpoint": str(ckpt),
        "data": data,
        "counts": counts,
        "date": date.today().isoformat(),
    }
    adaptation["source_on_local_test"] = {k: v for k, v in before.items() if "multiclass" not in k}
    adaptation["site_on_local_test"] = {k: v for k, v in after.items() if "multiclass" not in k}
    path = save_adapted(
        site, ckpt, out / "site.ckpt", _extra(model, ckpt, parts, adaptation, after, out, datamodule.group_column)
    )
    metrics = {f"source/{k}": v for k, v in before.items()} | after
    # the source as source_checkpoint: a metrics.json naming a "checkpoint" is an eval.py run of it (model card)
    metrics |= {"site_checkpoint": str(path), "source_checkpoint": str(ckpt), "strategy": info["strategy"]["name"]}
    metrics |= {"epochs": info["epochs"], "counts": counts}
    metrics["data"] = {"name": data.get("name"), "root": data.get("root"), "part": "local test part"}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True, default=str))
    log.info(
        "site checkpoint %s: local test AUROC %.3f -> %.3f, sensitivity %.3f -> %.3f, specificity %.3f -> %.3f",
        path,
        before["test/auroc"],
        after["test/auroc"],
        before["test_op/recall"],
        after["test_op/recall"],
        before["test_op/specificity"],
        after["test_op/specificity"],
    )
    return metrics


PARTS = {"fine_tune": "train", "calibration": "val", "test": "test"}  # local part -> the datamodule's split


def _extra(model, ckpt: str, parts: dict, adaptation: dict, after: dict, out: Path, group: str | None) -> dict:
    """What the site checkpoint keeps beside its weights: the adaptation, its local test figures (what a later
    external evaluation compares against), the source's own, and the splits of the source run and of the local parts
    (the leak guard refuses an image either trained or calibrated on)."""
    stored = (
        model.deployment.split_ids
        if isinstance(model.deployment.split_ids, list)
        else [model.deployment.split_ids or {}]
    )
    local = {split: parts[name].image_ids for name, split in PARTS.items()}
    stored_groups = (
        model.deployment.split_groups
        if isinstance(model.deployment.split_groups, list)
        else [model.deployment.split_groups]
    )
    local_groups = (
        {"column": group, "groups": {s: parts[n].groups.tolist() for n, s in PARTS.items()}} if group else None
    )
    return {
        "adaptation": adaptation,
        "in_domain_test": in_domain_figures(after, out / "metrics.json") | {"source": f"local test part ({out})"},
        "source_in_domain_test": in_domain_metrics(ckpt),
        "split_ids": [*stored, local],  # the source's splits first (eval.py without data= evaluates on them)
        "split_groups": [*stored_groups, local_groups],
    }


@hydra.main(version_base="1.3", config_path="conf", config_name="adapt")
def main(cfg: DictConfig) -> None:
    adapt(to_plain(cfg))


if __name__ == "__main__":
    main()
