"""python eval.py ckpt_path=outputs/.../checkpoints/best.ckpt [data=isic2018 data.root=...]"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import lightning as L
import torch
from omegaconf import DictConfig

from lesion.config import to_plain
from lesion.data import build_datamodule
from lesion.metrics import diagnosis_collection, screening_metrics
from lesion.module import LesionClassifier
from lesion.reports import LABELS, confusion_table, plot_confusion, plot_roc


def evaluate(config: dict) -> dict[str, float]:
    """Predict the test split with a checkpoint; write metrics.json, confusion_matrix.md/.png and roc.png."""
    ckpt = Path(config["ckpt_path"])
    if not ckpt.is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt} does not exist; pass a .ckpt from outputs/.../checkpoints/")
    model = LesionClassifier.load_from_checkpoint(ckpt, map_location="cpu")
    datamodule = build_datamodule(config.get("data") or model.hparams.data, model.data_config)
    if list(datamodule.classes) != list(model.hparams.class_names):
        raise ValueError(
            f"data classes {list(datamodule.classes)} differ from the checkpoint's {model.hparams.class_names}"
        )
    trainer = L.Trainer(**config["trainer"], logger=False, default_root_dir=config["paths"]["output_dir"])
    batches = trainer.predict(model, dataloaders=datamodule.test_dataloader())
    p_malignant = torch.cat([b["p_malignant"] for b in batches])
    labels = torch.cat([b["label"] for b in batches])
    y_malignant = model.is_malignant(labels)
    metrics = screening_metrics(p_malignant, y_malignant)
    names = model.hparams.class_names
    if len(names) > 2:
        probs = torch.cat([b["probs"] for b in batches])
        metrics |= {k: float(v) for k, v in diagnosis_collection(len(names))(probs, labels).items()}
    metrics = {f"test/{k}": v for k, v in metrics.items()}
    # Two classes: name the axes by them (apple/orange); more: the benign/malignant grouping.
    axes = tuple(sorted(names, key=lambda c: c in model.hparams.malignant)) if len(names) == 2 else LABELS
    counts = {k: int(metrics[f"test/{k}"]) for k in ("tp", "fn", "fp", "tn")}
    table = confusion_table(counts, axes)
    out = Path(config["paths"]["output_dir"])
    (out / "metrics.json").write_text(json.dumps(metrics | {"checkpoint": str(ckpt)}, indent=2, sort_keys=True))
    (out / "confusion_matrix.md").write_text(f"# Confusion matrix ({ckpt.name}, threshold 0.5)\n\n{table}")
    plot_confusion(counts, out / "confusion_matrix.png", axes)
    plot_roc(p_malignant, y_malignant, out / "roc.png", metrics["test/auroc"])
    print(table)
    print(json.dumps(metrics, indent=2, sort_keys=True))
    print(f"[lesion] evaluation written to {out}")
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(to_plain(cfg))


if __name__ == "__main__":
    main()
