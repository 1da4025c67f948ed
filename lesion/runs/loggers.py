"""Loggers that survive a resume: a CSV logger that keeps the epochs before it, and W&B run ids kept in the run dir."""

from __future__ import annotations

import csv
import os
import secrets
from pathlib import Path

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class _KeepingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv; on a resume this one keeps the rows of the epochs
    before `keep_before_epoch` and drops the rest (the interrupted epoch is trained again)."""

    def __init__(self, log_dir: str, keep_before_epoch: int | None):
        self.keep_before_epoch = keep_before_epoch
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if self.keep_before_epoch is None or not path.is_file():
            return super()._check_log_dir_exists()
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            fields = list(reader.fieldnames or [])
            rows = [r for r in reader if r.get("epoch") and int(float(r["epoch"])) < self.keep_before_epoch]
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        self.metrics_keys = fields


class ResumableCSVLogger(CSVLogger):
    """lightning's CSVLogger, plus `resume_from(epoch)` so a resumed run appends to the same metrics.csv."""

    _keep_before_epoch: int | None = None

    def resume_from(self, epoch: int) -> None:
        self._keep_before_epoch = epoch

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        self.save()  # the CSV on disk always covers at least what the newest checkpoint has seen

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(self.log_dir, self._keep_before_epoch)
        return self._experiment


def wandb_run_id(output_dir: Path) -> str:
    """The run dir's W&B run id, created on first use, so a resumed run continues the same W&B run."""
    path = Path(output_dir) / "wandb_id.txt"
    if path.is_file():
        return path.read_text().strip()
    run_id = secrets.token_hex(4)  # W&B run ids: lowercase letters and digits
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id)
    return run_id
