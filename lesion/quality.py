"""The quality gate: a photo that cannot be judged gets `decision: retake` and the reason in plain words, never a
probability. It runs before any prediction in predict.py and app.py, in this order:

- too small: the short side below `min_side` pixels;
- badly exposed: more clipped highlights or crushed shadows than `exposure_percentile` of the training images had;
- featureless: almost no contrast at the model's input size (a flat colour);
- blurred: variance of the Laplacian at the model's input size below `sharpness_percentile` of the training images';
- not a skin close-up: the model's energy score (Liu et al., NeurIPS 2020: -logsumexp of the logits) above
  `ood_percentile` of the validation images' scores.

Measures are taken at the model's input size (the photo resized as preprocessing resizes it), so they mean the same
for a 200x150 dermoscopy image and a 12-megapixel photo. The thresholds come from the training run's own data
(`fit_quality`, at the end of train.py), are stored in the checkpoint (`quality`) and shown in the model card.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

FLAT_STD = 3.0  # grey levels: below this at the input size there is nothing to judge
HIGHLIGHT, SHADOW = 240, 16  # grey levels counted as clipped / crushed
RETAKE = {
    "too_small": "The photo is too small ({width}x{height} pixels; at least {min_side} on the short side is needed). "
    "Take it again closer to the spot, at the camera's full resolution.",
    "featureless": "The photo shows almost nothing (a flat colour). Take a photo of the skin spot.",
    "overexposed": "Too much of the photo is washed out. Avoid flash glare and direct light, and take it again.",
    "underexposed": "Too much of the photo is too dark. Take it again in better light.",
    "blurred": "The photo is blurred. Hold the phone still, tap the spot to focus, and take it again.",
    "not_skin": "This does not look like a close-up of a skin spot. Take the photo close to the spot, with the spot "
    "in the middle of the frame.",
}


def image_measures(image: np.ndarray, to_input_size: Callable[[np.ndarray], np.ndarray]) -> dict[str, float]:
    """Sharpness, contrast and the clipped / crushed shares of an RGB photo at the model's input size."""
    grey = cv2.cvtColor(to_input_size(image), cv2.COLOR_RGB2GRAY)
    return {
        "sharpness": float(cv2.Laplacian(grey, cv2.CV_64F).var()),
        "contrast": float(grey.std()),
        "highlights": float((grey >= HIGHLIGHT).mean()),
        "shadows": float((grey <= SHADOW).mean()),
    }


def energy(logits: torch.Tensor) -> torch.Tensor:
    """The energy score of each row: high for inputs unlike the training data (Liu et al., 2020)."""
    return -torch.logsumexp(logits.float(), dim=-1)


def fit_quality(
    images: Iterable[np.ndarray],
    to_input_size: Callable[[np.ndarray], np.ndarray],
    val_logits: torch.Tensor,
    settings: dict,
    total: int | None = None,
) -> dict:
    """Thresholds from the training images (`images`) and the validation logits; `settings` is train.yaml `quality`."""
    rows = [image_measures(im, to_input_size) for im in tqdm(images, total=total, desc="quality gate", unit="img")]
    if not rows:
        raise ValueError("the quality gate needs training images to fit its thresholds")
    measures = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    high = settings["exposure_percentile"]
    return {
        "min_side": int(settings["min_side"]),
        "min_contrast": FLAT_STD,
        "min_sharpness": float(np.percentile(measures["sharpness"], settings["sharpness_percentile"])),
        "max_highlights": float(max(np.percentile(measures["highlights"], high), settings["exposure_floor"])),
        "max_shadows": float(max(np.percentile(measures["shadows"], high), settings["exposure_floor"])),
        "max_energy": float(np.percentile(energy(val_logits).numpy(), settings["ood_percentile"])),
        "fitted_on": {"training_images": len(rows), "val_images": len(val_logits)},
        "percentiles": {k: settings[k] for k in ("sharpness_percentile", "exposure_percentile", "ood_percentile")},
    }


def fit_on_datamodule(datamodule, val_logits: torch.Tensor, settings: dict, seed: int = 0) -> dict | None:
    """`fit_quality` on up to `settings["max_images"]` training images of `datamodule` (a seeded sample), measured
    after its own resize, and the validation logits; None for data without photos (synthetic tensors)."""
    if not datamodule.photos:
        log.info("the data are tensors, not photos: the quality gate is not fitted")
        return None
    ids = datamodule.frames["train"]["image_id"]
    sample = ids.sample(min(int(settings["max_images"]), len(ids)), random_state=seed).tolist()
    read = datamodule.reader()
    return fit_quality(
        (read(i) for i in sample), datamodule.transforms.to_input_size, val_logits, settings, len(sample)
    )


class QualityGate:
    """`check_image` before the model, `check_logits` after it: the reason key and its text, or None to go on.

    Without fitted thresholds (a checkpoint trained before the gate) only size and flatness are checked."""

    def __init__(self, thresholds: dict | None, to_input_size: Callable[[np.ndarray], np.ndarray], min_side: int):
        self.thresholds = dict(thresholds or {"min_side": min_side, "min_contrast": FLAT_STD})
        self.fitted = thresholds is not None
        self.to_input_size = to_input_size
        if not self.fitted:
            log.warning(
                "this checkpoint has no quality thresholds (trained before the gate): only size and flatness are "
                "checked. Retrain, or set quality.enabled=false to turn the gate off"
            )

    def check_image(self, image: np.ndarray) -> tuple[str, str] | None:
        t = self.thresholds
        height, width = image.shape[:2]
        if min(height, width) < t["min_side"]:
            return "too_small", RETAKE["too_small"].format(width=width, height=height, min_side=t["min_side"])
        m = image_measures(image, self.to_input_size)
        failed = [  # a black frame is too dark before it is featureless
            ("overexposed", m["highlights"] > t.get("max_highlights", 1.0)),
            ("underexposed", m["shadows"] > t.get("max_shadows", 1.0)),
            ("featureless", m["contrast"] < t["min_contrast"]),
            ("blurred", m["sharpness"] < t.get("min_sharpness", 0.0)),
        ]
        reason = next((key for key, bad in failed if bad), None)
        return (reason, RETAKE[reason]) if reason else None

    def check_logits(self, logits: torch.Tensor) -> list[tuple[str, str] | None]:
        limit = self.thresholds.get("max_energy")
        if limit is None:
            return [None] * len(logits)
        return [("not_skin", RETAKE["not_skin"]) if e > limit else None for e in energy(logits).tolist()]
