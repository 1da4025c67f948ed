"""Phone-camera degradations at graded severities (0 = identity), applied at the model's input size (the photo is
resized as preprocessing resizes it, then degraded), so a severity means the same on a 200x150 dermoscopy image and on
a 12-megapixel phone photo (a 2-pixel blur or a noise of sigma 16 would vanish in the downscale of the latter); and the
robustness table, a model's screening figures under each of them."""

from __future__ import annotations

from collections.abc import Callable

import cv2
import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from lesion.models.module import LesionClassifier
from lesion.screening.metrics import screening_metrics
from lesion.screening.predictions import Predictions, predict


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), sigma)


def _motion_blur(image: np.ndarray, length: float) -> np.ndarray:
    kernel = np.zeros((int(length), int(length)), np.float32)
    kernel[int(length) // 2, :] = 1.0 / int(length)
    return cv2.filter2D(image, -1, kernel)


def _jpeg(image: np.ndarray, quality: float) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _downscale(image: np.ndarray, factor: float) -> np.ndarray:
    h, w = image.shape[:2]
    small = cv2.resize(image, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _brightness(image: np.ndarray, gain: float) -> np.ndarray:
    return np.clip(image.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def _contrast(image: np.ndarray, factor: float) -> np.ndarray:
    mean = image.reshape(-1, 3).mean(0)
    return np.clip((image.astype(np.float32) - mean) * factor + mean, 0, 255).astype(np.uint8)


def _colour_temperature(image: np.ndarray, shift: float) -> np.ndarray:
    """Warm cast: red up, blue down by `shift` (a tungsten-lit phone photo)."""
    gains = np.array([1 + shift, 1.0, 1 - shift], np.float32)
    return np.clip(image.astype(np.float32) * gains, 0, 255).astype(np.uint8)


def _sensor_noise(image: np.ndarray, sigma: float) -> np.ndarray:
    rng = np.random.default_rng(int(image[::7, ::7].sum()) % (2**32))  # fixed per image: evaluations are repeatable
    return np.clip(image.astype(np.float32) + rng.normal(0, sigma, image.shape), 0, 255).astype(np.uint8)


# name -> (function, parameter at severity 1, 2, 3); severity 0 is the clean image.
DEGRADATIONS: dict[str, tuple[Callable[[np.ndarray, float], np.ndarray], tuple[float, ...]]] = {
    "gaussian_blur": (_gaussian_blur, (1.0, 2.0, 3.5)),
    "motion_blur": (_motion_blur, (5, 9, 15)),
    "jpeg_quality": (_jpeg, (50, 25, 10)),
    "downscale": (_downscale, (0.5, 0.33, 0.2)),
    "brightness": (_brightness, (0.75, 0.55, 0.4)),
    "contrast": (_contrast, (0.7, 0.5, 0.3)),
    "colour_temperature": (_colour_temperature, (0.1, 0.2, 0.3)),
    "sensor_noise": (_sensor_noise, (8.0, 16.0, 28.0)),
}


def degrade(image: np.ndarray, name: str, severity: int) -> np.ndarray:
    """`image` (RGB uint8) under degradation `name` at `severity` (0 = unchanged, 1-3 = the table above)."""
    if name not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {name!r}; choose from {sorted(DEGRADATIONS)}")
    function, levels = DEGRADATIONS[name]
    if severity == 0:
        return image
    if not 1 <= severity <= len(levels):
        raise ValueError(f"severity must be 0..{len(levels)} for {name}, got {severity}")
    return function(image, levels[severity - 1])


class DegradedReader:
    """Wraps a datamodule's reader so every image is resized to the model's input (`to_input_size`, as preprocessing
    resizes) and degraded there, before the rest of preprocessing (picklable for workers)."""

    def __init__(self, read, name: str, severity: int, to_input_size: Callable[[np.ndarray], np.ndarray]):
        self.read, self.name, self.severity, self.to_input_size = read, name, severity, to_input_size

    def __call__(self, image_id: str) -> np.ndarray:
        return degrade(self.to_input_size(self.read(image_id)), self.name, self.severity)


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
    from lesion.data.datamodule import LesionDataset

    rows = subset(test.image_ids, test.y_malignant, max_images)
    ids = [test.image_ids[i] for i in rows]
    labels = test.labels[rows]
    threshold = float(model.threshold)
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
