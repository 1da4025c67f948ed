"""A split's model outputs aligned with its image ids, from a prediction pass or from what trainer.test keeps."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import lightning as L
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
