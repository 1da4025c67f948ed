"""python stack.py data=isic2024 data.root=... scores=<sweep_dir>/oof_scores.csv [features=auto] [ablation=true]"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig

from lesion.data import build_datamodule
from lesion.runs.config import to_plain
from lesion.screening.reports import markdown_table, plot_importance
from lesion.screening.stacking import ablation, figures, fit_stack, join, read_scores

log = logging.getLogger("lesion")
INPUT = {"input_size": [3, 224, 224], "mean": [0.5] * 3, "std": [0.5] * 3}  # the frame only: images are not read


def run_stack(config: dict) -> dict:
    """Fit the stack, write stack.json (the fitted trees, calibration and threshold), stack_scores.csv,
    metrics.json, ablation.md/.csv and importance.png to the run dir; returns the metrics."""
    out = Path(config["paths"]["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    datamodule = build_datamodule(config["data"], INPUT)
    forbidden = tuple(getattr(datamodule, "train_only", ()))
    table = join(datamodule.load_frame(), read_scores(config["scores"]), datamodule.group_column)
    fitted = fit_stack(table, config, forbidden)
    stack, resamples = fitted["stack"], config["bootstrap"]["resamples"]
    p = stack.calibrated(fitted["logits"])
    metrics = figures(table, p, resamples, stack.deployment["threshold"])
    metrics |= {k: stack.deployment[k] for k in ("threshold", "platt")} | {"features": len(stack.columns)}
    metrics |= {"fitted_lesions": int(fitted["fit"].sum()), "test_lesions": int(fitted["test"].sum())}
    stack.save(out / "stack.json")
    written = table[["image_id", "split", "patient", "y_malignant"]].assign(p_malignant=p)
    written.assign(decision=np.where(p > stack.deployment["threshold"], "refer", "no referral")).to_csv(
        out / "stack_scores.csv", index=False
    )
    fitted["importance"].rename("gain").to_csv(out / "importance.csv")
    plot_importance(fitted["importance"], out / "importance.png")
    if config["ablation"]:
        rows = ablation(table, config, fitted, resamples)
        rows.to_csv(out / "ablation.csv", index=False)
        (out / "ablation.md").write_text("# The stack's ablation (same folds)\n\n" + ablation_markdown(rows) + "\n")
        metrics["ablation"] = rows.to_dict("records")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    shown = {k: round(v, 4) for k, v in metrics.items() if k.split("/")[-1] in ("pauc80", "auroc", "top15_sensitivity")}
    log.info("stack written to %s: %s%s", out, shown, "\n" + ablation_markdown(rows) if config["ablation"] else "")
    return metrics


def ablation_markdown(rows: pd.DataFrame) -> str:
    """One row per variant: pAUC80, AUROC and top-15 sensitivity with their patient-bootstrap CIs."""
    table = pd.DataFrame({"variant": rows["variant"]})
    for split in ("oof", "test"):
        for name in ("pauc80", "auroc", "top15_sensitivity"):
            key = f"{split}/{name}"
            if key in rows.columns:
                table[key] = [_ci(v, ci) for v, ci in zip(rows[key], rows.get(f"{key}_ci", [None] * len(rows)))]
    return markdown_table(table)


def _ci(value: float, ci) -> str:
    return f"{value:.4f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if isinstance(ci, list) else "")


@hydra.main(version_base="1.3", config_path="conf", config_name="stack")
def main(cfg: DictConfig) -> None:
    run_stack(to_plain(cfg))


if __name__ == "__main__":
    main()
