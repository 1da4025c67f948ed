"""W&B dashboards: confusion matrix and ROC as W&B plots, sample predictions, eval tables and images."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from lightning.pytorch.loggers import WandbLogger

NAMES = ["benign", "malignant"]


def wandb_loggers(loggers) -> list[WandbLogger]:
    return [logger for logger in loggers if isinstance(logger, WandbLogger)]


def log_test_predictions(loggers, model, test, read, best: str, samples: int = 16) -> None:
    """Confusion matrix and ROC at the operating threshold, a table of sample predictions, the best checkpoint."""
    runs = wandb_loggers(loggers)
    if not runs:
        return
    import wandb

    p = test.p_malignant(model)
    y, called = test.y_malignant.long(), (p > float(model.deployment.threshold)).long()
    table = wandb.Table(columns=["image", "image_id", "label", "p_malignant", "decision"])
    for i in range(min(samples, len(test.image_ids))):
        image_id = test.image_ids[i]
        table.add_data(wandb.Image(read(image_id)), image_id, NAMES[y[i]], float(p[i]), NAMES[called[i]])
    payload = {
        "test/confusion_matrix": wandb.plot.confusion_matrix(
            y_true=y.tolist(), preds=called.tolist(), class_names=NAMES
        ),
        "test/roc": wandb.plot.roc_curve(y.tolist(), torch.stack([1 - p, p], dim=1).tolist(), labels=NAMES),
        "test/predictions": table,
    }
    for logger in runs:
        logger.experiment.log(payload)
        logger.experiment.summary["best_checkpoint"] = best


def log_eval_artifacts(loggers, out_dir: Path, report: dict) -> None:
    """eval.py's metrics, its CSV tables (fairness, robustness) as W&B tables under eval/table/<name> and its PNGs
    as images under eval/plot/<name> (robustness has both, so the two need their own namespaces)."""
    runs = wandb_loggers(loggers)
    if not runs:
        return
    import wandb

    scalars = {k: v for k, v in report.items() if isinstance(v, int | float)}
    payload: dict = dict(scalars)
    for csv in sorted(out_dir.glob("*.csv")):
        payload[f"eval/table/{csv.stem}"] = wandb.Table(dataframe=pd.read_csv(csv))
    for png in sorted(out_dir.glob("*.png")):
        payload[f"eval/plot/{png.stem}"] = wandb.Image(str(png))
    for logger in runs:
        logger.experiment.log(payload)


def finish(loggers) -> None:
    """Close W&B runs, so the next job of a Hydra multirun (same process) starts its own run."""
    if wandb_loggers(loggers):
        import wandb

        wandb.finish()
