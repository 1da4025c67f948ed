"""A split's model outputs aligned with its image ids, from a prediction pass or from what trainer.test keeps."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from torch.utils.data import DataLoader

from lesion.models.module import LesionClassifier


@dataclass
class Predictions:
    """One split's model outputs, aligned with its image ids."""

    image_ids: list[str]
    labels: torch.Tensor
    logits: torch.Tensor
    y_malignant: torch.Tensor
    binary_labels: bool = False  # labels are benign/malignant of an external set, not the model's classes
    features: torch.Tensor | None = None  # pooled features of the identity view, when predict() was asked for them

    def p_malignant(self, model: LesionClassifier, calibrated: bool = True) -> torch.Tensor:
        """P(malignant), calibrated with the model's stored temperature and Platt map; `calibrated=False`: as the
        network gives it (temperature 1, no Platt map)."""
        return model.scores(self.logits, temperature=calibrated, platt=calibrated)[1]


def predict(
    model: LesionClassifier, loader: DataLoader, trainer: L.Trainer, binary_labels: bool = False, features: bool = False
) -> Predictions:
    """binary_labels: the loader's labels are benign (0) / malignant (1), e.g. an external set scored through the
    P(malignant) of a multiclass model. features: also keep the pooled features of each image's identity view, from
    the same forward passes (the quality gate's `ood: residual` is fitted on them)."""
    from lesion.models.features import captured_features

    with captured_features(model) if features else nullcontext(lambda _: None) as captured:
        batches = trainer.predict(model, dataloaders=loader)
        pooled = captured(len(batches))
    predictions = predictions_of(batches, model, binary_labels)
    predictions.features = pooled
    return predictions


def predictions_of(batches: list[dict], model: LesionClassifier, binary_labels: bool = False) -> Predictions:
    """Predictions from per-batch outputs with "image_id", "label" and "logits" (predict_step's, or the
    `model.test_outputs` that trainer.test leaves)."""
    labels = torch.cat([b["label"] for b in batches]).cpu()
    return Predictions(
        image_ids=[i for b in batches for i in b["image_id"]],
        labels=labels,
        logits=torch.cat([b["logits"] for b in batches]).cpu(),
        y_malignant=labels.long().cpu() if binary_labels else model.is_malignant(labels).cpu(),
        binary_labels=binary_labels,
    )


def write_predictions(path: Path, split: str, predictions: Predictions, model: LesionClassifier, append: bool) -> None:
    """One row per image of `split` in `path` (predictions.csv): image_id, split, label (a class name), malignant (0/1),
    P(malignant) as the network gives it and calibrated with the model's stored calibration, and whether it is
    referred at the stored threshold. Written as soon as a split is scored, before any report is built, so a report
    that fails later loses no prediction; `append`: add to the file (else start it)."""
    names = ["benign", "malignant"] if predictions.binary_labels else list(model.hparams.class_names)
    p = predictions.p_malignant(model)
    rows = pd.DataFrame(
        {
            "image_id": predictions.image_ids,
            "split": split,
            "label": [names[int(i)] for i in predictions.labels],
            "malignant": predictions.y_malignant.long().numpy(),
            "p_malignant_uncalibrated": predictions.p_malignant(model, calibrated=False).double().numpy(),
            "p_malignant": p.double().numpy(),
            "referred": (p > model.deployment.threshold).numpy(),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    rows.to_csv(path, mode="a" if append else "w", header=not (append and path.is_file()), index=False)
