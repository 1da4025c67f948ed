"""Fitting the quality gate on a training run's data: a sample of training photos, their pooled features and the val
predictions (the numbers are lesion/stats/quality.py's)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from lesion.models.features import pooled_features
from lesion.stats.quality import fit_quality, fits_features

log = logging.getLogger(__name__)


def fit_on_datamodule(model, datamodule, val, settings: dict, seed: int = 0) -> dict | None:
    """`fit_quality` on up to `settings["max_images"]` training images of `datamodule` (a seeded sample), measured
    after its own resize, the validation predictions `val` (lesion.screening.predictions.Predictions: logits, and when
    `fits_features(settings)` the pooled features, `predict(..., features=True)`) and the model's pooled features of
    the sample; None for data without photos (synthetic tensors)."""
    if not datamodule.photos:
        log.info("the data are tensors, not photos: the quality gate is not fitted")
        return None
    ids = gate_sample(datamodule.frames["train"], int(settings["max_images"]), seed)
    read = datamodule.reader()
    features = None
    if fits_features(settings):
        if val.features is None:
            raise ValueError("quality.ood=residual needs the val split's pooled features: predict(..., features=True)")
        features = {"train": _features(model, (read(i) for i in ids), datamodule.transforms, len(ids))}
        features["val"] = val.features
    return fit_quality(
        (read(i) for i in ids), datamodule.transforms.to_input_size, val.logits, settings, len(ids), features
    )


def gate_sample(frame, max_images: int, seed: int = 0) -> list[str]:
    """Up to `max_images` training image ids (a seeded sample) drawn equally from each source where the frame names
    sources (a multi-source run: 200 phone photos are not drowned by 7,000 dermoscopy images), else from all."""
    if "source" not in frame:
        return frame["image_id"].sample(min(max_images, len(frame)), random_state=seed).tolist()
    groups = [g for _, g in frame.groupby("source", sort=True)]
    share = max_images // len(groups)
    return [i for g in groups for i in g["image_id"].sample(min(share, len(g)), random_state=seed).tolist()]


def _features(model, images: Iterable[np.ndarray], transforms, total: int, batch_size: int = 64) -> torch.Tensor:
    out, batch = [], []
    for image in tqdm(images, total=total, desc="training features", unit="img"):
        batch.append(transforms(image, train=False))
        if len(batch) == batch_size:
            out.append(pooled_features(model, torch.stack(batch)))
            batch = []
    if batch:
        out.append(pooled_features(model, torch.stack(batch)))
    return torch.cat(out)
