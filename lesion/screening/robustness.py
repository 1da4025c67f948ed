"""The robustness table: a model's screening figures under each phone-camera degradation (lesion/data/degradations.py)
and severity, and the drop from clean."""

from __future__ import annotations

import lightning as L
import pandas as pd
import torch
from torch.utils.data import DataLoader

from lesion.data.datamodule import LesionDataset
from lesion.data.degradations import DEGRADATIONS, DegradedReader
from lesion.models.module import LesionClassifier
from lesion.screening.predictions import Predictions, predict
from lesion.stats.metrics import screening_metrics


def subset(predictions_ids: list[str], labels: torch.Tensor, max_images: int | None, seed: int = 0) -> list[int]:
    """Row indices of a class-stratified random subset of at most `max_images` (all rows when None)."""
    if not max_images or max_images >= len(predictions_ids):
        return list(range(len(predictions_ids)))
    generator = torch.Generator().manual_seed(seed)
    share = max_images / len(predictions_ids)
    chosen = []
    for value in labels.unique():
        rows = torch.nonzero(labels == value).flatten()
        take = max(1, round(share * len(rows)))
        chosen += rows[torch.randperm(len(rows), generator=generator)[:take]].tolist()
    return sorted(chosen)


def robustness_table(
    model: LesionClassifier,
    datamodule,
    trainer: L.Trainer,
    test: Predictions,
    severities: list[int],
    max_images: int | None = None,
    split: str = "test",
) -> pd.DataFrame:
    """AUROC, sensitivity and specificity at the stored threshold under each degradation and severity, and the
    drop from clean, on the same (optionally subsampled, class-stratified) images."""
    rows = subset(test.image_ids, test.y_malignant, max_images)
    ids = [test.image_ids[i] for i in rows]
    labels = test.labels[rows]
    threshold = float(model.deployment.threshold)
    results = []
    for name in DEGRADATIONS:
        for severity in [0, *severities]:
            if severity == 0 and results:
                results.append(results[0] | {"degradation": name})
                continue
            dataset = LesionDataset(
                ids,
                labels,
                DegradedReader(datamodule.reader(), name, severity, datamodule.transforms.to_input_size),
                datamodule.transforms,
                train=False,
            )
            loader = DataLoader(dataset, batch_size=datamodule.eval_batch_size, num_workers=datamodule.num_workers)
            p = predict(model, loader, trainer).p_malignant(model)
            m = screening_metrics(p, test.y_malignant[rows], threshold)
            results.append(
                {
                    "degradation": name,
                    "severity": severity,
                    "auroc": m["auroc"],
                    "sensitivity": m["recall"],
                    "specificity": m["specificity"],
                }
            )
    table = pd.DataFrame(results)
    clean = table[table["severity"] == 0].iloc[0]
    for metric in ("auroc", "sensitivity", "specificity"):
        table[f"{metric}_drop"] = clean[metric] - table[metric]
    table.insert(2, "images", len(ids))
    return table
