"""Multirun summaries: one row per job (overrides, best val metric, test metrics), as CSV, Markdown and a bar chart.

A job that raises in a multirun does not stop the sweep: `run_job` records its error in the job dir (`error.txt`), the
summary marks its row failed with that error, every other job runs, and the sweep exits 1 at its end (after the
summary) when more than `hydra.callbacks.sweep_summary.max_failure_rate` of its jobs failed."""

from __future__ import annotations

import json
import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

ERROR_FILE = "error.txt"
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
        init = initialisation(backbone)
        row = {"job": job.name, "overrides": " ".join(overrides), "status": "failed", "init": init}
        error = job / ERROR_FILE
        if error.is_file():  # the exception's last line: `ValueError: Invalid learning rate: -1.0`
            row["error"] = error.read_text().strip().splitlines()[-1]
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


def initialisation(backbone: dict) -> str:
    """How a row's weights began, for the summary's `init` column."""
    if backbone.get("weights"):
        return "weights file"
    if backbone.get("pretrained"):
        return "ImageNet"
    frozen = backbone.get("freeze") or []
    return f"from scratch, frozen at random: {', '.join(frozen)}" if frozen else "from scratch, every stage trained"


def write_summary(sweep_dir: Path) -> pd.DataFrame:
    from lesion.screening.reports import markdown_table, plot_sweep

    table = summarise(sweep_dir)
    table.to_csv(sweep_dir / "summary.csv", index=False)
    (sweep_dir / "summary.md").write_text(f"# Sweep summary: {sweep_dir.name}\n\n" + markdown_table(table))
    metric = next((c for c in table.columns if c.startswith("best ")), None)
    if metric and table[metric].notna().any():
        plot_sweep(table, metric, sweep_dir / "summary.png")
    log.info("sweep summary written to %s", sweep_dir / "summary.md")
    return table


def run_job(job: Callable[[dict], float | None], config: dict, in_sweep: bool) -> float | None:
    """`job(config)`; in a sweep, an exception is logged, written to the job dir's error.txt, and the job returns None
    (its row is marked failed and the sweep goes on; Optuna marks the trial failed). Outside a sweep it propagates."""
    if not in_sweep:
        return job(config)
    try:
        return job(config)
    except Exception as error:
        out = Path(config["paths"]["output_dir"])
        out.mkdir(parents=True, exist_ok=True)
        (out / ERROR_FILE).write_text("".join(traceback.format_exception(error)))
        log.exception("job %s failed (%s); the sweep goes on", out, out / ERROR_FILE)
        _close_wandb()  # else the next job's WandbLogger reuses this job's open run
        return None


class SweepSummary(Callback):
    """Hydra callback: after every job of a multirun and at its end, write summary.csv, summary.md and summary.png to
    the sweep dir (a sweep that is stopped still has the summary of its finished jobs); at the end, raise when more
    than `max_failure_rate` of the jobs failed, so that scripts see the failure."""

    def __init__(self, max_failure_rate: float = 0.0) -> None:
        if not 0.0 <= max_failure_rate <= 1.0:
            raise ValueError(f"hydra.callbacks.sweep_summary.max_failure_rate={max_failure_rate}: give 0.0 to 1.0")
        self.max_failure_rate = max_failure_rate

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        from hydra.types import RunMode

        sweep_dir = Path(config.hydra.sweep.dir)
        if config.hydra.mode == RunMode.MULTIRUN and sweep_dir.is_dir():
            write_summary(sweep_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            failures = too_many_failures(write_summary(sweep_dir), sweep_dir, self.max_failure_rate)
            if failures:  # Hydra turns a callback's exceptions into warnings (exit 0); SystemExit passes: exit 1
                sys.exit(failures)


def too_many_failures(table: pd.DataFrame, sweep_dir: Path, max_failure_rate: float) -> str | None:
    """The message to exit with when more than max_failure_rate of a sweep's jobs failed, else None."""
    failed = table[table["status"] == "failed"] if len(table) else table
    if not len(failed) or len(failed) / len(table) <= max_failure_rate:
        return None
    jobs = "; ".join(
        f"job {r.job}: {r.error if isinstance(r.error, str) else 'no metrics.json'}"
        for r in failed.assign(error=failed.get("error")).itertuples()
    )
    return (
        f"{len(failed)} of {len(table)} jobs of the sweep failed ({jobs}); every other job ran and "
        f"{sweep_dir / 'summary.md'} lists them all. Tolerate failures with "
        f"hydra.callbacks.sweep_summary.max_failure_rate=<fraction> (now {max_failure_rate})"
    )


def _close_wandb() -> None:
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=1)


def _ci_text(interval) -> str:
    """A bootstrap interval as `low-high`, 3 decimals (a cell, not a list)."""
    return f"{interval[0]:.3f}-{interval[1]:.3f}" if interval else ""


def _num(path: Path) -> tuple[int, str]:
    return (int(path.name), "") if path.name.isdigit() else (1 << 30, path.name)
