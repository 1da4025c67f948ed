"""Multirun summaries: one row per job (overrides, best val metric, test metrics), as CSV, Markdown and a bar chart."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

COLUMNS = (
    "val/auroc",
    "val/pauc80",
    "test/auroc",
    "test_op/auroc",
    "test_op/auroc_ci",
    "test/pauc80",
    "test_op/pauc80_ci",
    "test_op/recall",
    "test_op/recall_ci",
    "test_op/specificity",
    "test_op/specificity_ci",
    "test/recall",
    "test/specificity",
    "threshold",
    "best_epoch",
    "train_loss_at_best",
    "val_loss_at_best",
    "epochs",
    "fit_seconds",
    "train_img_per_s",
)


def summarise(sweep_dir: Path) -> pd.DataFrame:
    """Rows for every job dir of a sweep, sorted by the monitored metric (failed jobs last, marked)."""
    rows, monitor, mode = [], None, "max"
    for job in sorted((p for p in sweep_dir.iterdir() if (p / ".hydra" / "overrides.yaml").is_file()), key=_num):
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
        config = yaml.safe_load((job / ".hydra" / "config.yaml").read_text()) or {}
        monitor, mode = config.get("monitor", monitor), config.get("monitor_mode", mode)
        backbone = config.get("backbone") or {}
        init = "ImageNet" if backbone.get("pretrained") or backbone.get("weights") else "from scratch"
        row = {"job": job.name, "overrides": " ".join(overrides), "status": "failed", "init": init}
        metrics_file = job / "metrics.json"
        if metrics_file.is_file():
            metrics = json.loads(metrics_file.read_text())
            row |= {"status": "done", f"best {metrics['monitor']}": metrics.get("best_val_score")}
            row |= {k: _ci_text(metrics[k]) if k.endswith("_ci") else metrics[k] for k in COLUMNS if k in metrics}
        rows.append(row)
    table = pd.DataFrame(rows)
    if len(table) > 1:  # keep only what differs between jobs: the swept overrides
        parts = table["overrides"].str.split(" ")
        shared = set.intersection(*(set(p) for p in parts))
        table["overrides"] = [" ".join(o for o in p if o not in shared) for p in parts]
    best = f"best {monitor}"
    if best in table:
        table = table.sort_values(best, ascending=mode == "min", na_position="last", kind="stable")
    return table.reset_index(drop=True)


def write_summary(sweep_dir: Path) -> pd.DataFrame:
    from lesion.reports import markdown_table, plot_sweep

    table = summarise(sweep_dir)
    table.to_csv(sweep_dir / "summary.csv", index=False)
    (sweep_dir / "summary.md").write_text(f"# Sweep summary: {sweep_dir.name}\n\n" + markdown_table(table))
    metric = next((c for c in table.columns if c.startswith("best ")), None)
    if metric and table[metric].notna().any():
        plot_sweep(table, metric, sweep_dir / "summary.png")
    log.info("sweep summary written to %s", sweep_dir / "summary.md")
    return table


class SweepSummary(Callback):
    """Hydra callback: after a multirun, write summary.csv, summary.md and summary.png to the sweep dir."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            write_summary(sweep_dir)


def _ci_text(interval) -> str:
    """A bootstrap interval as `low-high`, 3 decimals (a cell, not a list)."""
    return f"{interval[0]:.3f}-{interval[1]:.3f}" if interval else ""


def _num(path: Path) -> tuple[int, str]:
    return (int(path.name), "") if path.name.isdigit() else (1 << 30, path.name)
