"""The quality gate: a photo that cannot be judged gets `decision: retake` and the reason in plain words, never a
probability. It runs before any prediction in predict.py and app.py, in this order:

- too small: the short side below `min_side` pixels;
- badly exposed: more clipped highlights or crushed shadows than `exposure_percentile` of the training images had;
- featureless: almost no contrast at the model's input size (a flat colour);
- blurred: variance of the Laplacian at the model's input size below `sharpness_percentile` of the training images';
- not a skin close-up: an out-of-distribution score above `ood_percentile` of the validation images' scores:
  `ood: residual` (default), the share of a photo's pooled feature (the input of the network's classifier layer,
  less the training mean) that lies outside the top `ood_components` principal directions of the training images'
  features (the residual of ViM, Wang et al., CVPR 2022, as a fraction of the feature's length); or `ood: energy`, the
  energy score of the logits (Liu et al., NeurIPS 2020: -logsumexp). On real lesions (bench/quality_gate.py) energy
  refused 7% of pictures of fruit, a class-conditional Mahalanobis distance in the top 128 directions 15-19%, the
  residual 88% (at 1% of clean lesions): what is unlike skin shows in the directions skin never varies in.

Measures are taken at the model's input size (the photo resized as preprocessing resizes it), so they mean the same
for a 200x150 dermoscopy image and a 12-megapixel photo, and where the lesion is: exposure, contrast and sharpness in
the centred square whose side is `region` of the short side (the web page sends the square the user framed; a photo
nobody framed has the spot in the middle), so a dark background or a scanned slide's black border does not condemn an
evenly lit lesion. A checkpoint fitted before `region` existed keeps judging the whole frame (region 1). The
thresholds come from the training run's own data (`fit_quality`, at the end of train.py, on a sample drawn equally from
each source of a multi-source run), or a site's own photos after adaptation (adapt.py); they are stored in the
checkpoint (`quality`) and shown in the model card.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch

from lesion.stats.quality import FLAT_STD, energy, feature_residual, image_measures

log = logging.getLogger(__name__)

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


class QualityGate:
    """`check_image` before the model, `check_outputs` after it: the reason key and its text, or None to go on.

    Without fitted thresholds (a checkpoint trained before the gate) only size and flatness are checked."""

    def __init__(self, thresholds: dict | None, to_input_size: Callable[[np.ndarray], np.ndarray], min_side: int):
        self.thresholds = dict(thresholds or {"min_side": min_side, "min_contrast": FLAT_STD})
        self.fitted = thresholds is not None
        self.to_input_size = to_input_size
        self.needs_features = "feature_residual" in self.thresholds
        if not self.fitted:
            log.warning(
                "this checkpoint has no quality thresholds (trained before the gate): only size and flatness are "
                "checked. Retrain, or set quality.enabled=false to turn the gate off"
            )

    def check_image(self, image: np.ndarray, at_input_size: np.ndarray | None = None) -> tuple[str, str] | None:
        """at_input_size: the photo already resized by the gate's `to_input_size` (a caller that feeds the model the
        same resized photo resizes once); `image` itself still decides whether it is too small."""
        t = self.thresholds
        height, width = image.shape[:2]
        if min(height, width) < t["min_side"]:
            return "too_small", RETAKE["too_small"].format(width=width, height=height, min_side=t["min_side"])
        sized = self.to_input_size(image) if at_input_size is None else at_input_size
        m = image_measures(sized, t.get("region", 1.0))
        failed = [  # a black frame is too dark before it is featureless
            ("overexposed", m["highlights"] > t.get("max_highlights", 1.0)),
            ("underexposed", m["shadows"] > t.get("max_shadows", 1.0)),
            ("featureless", m["contrast"] < t["min_contrast"]),
            ("blurred", m["sharpness"] < t.get("min_sharpness", 0.0)),
        ]
        reason = next((key for key, bad in failed if bad), None)
        return (reason, RETAKE[reason]) if reason else None

    def check_outputs(self, logits: torch.Tensor, features: torch.Tensor | None = None) -> list[tuple[str, str] | None]:
        """Out of distribution from the model's outputs: the feature residual when fitted (needs `features`, see
        `captured_features`), else the energy of the logits, else nothing to check."""
        fitted = self.thresholds.get("feature_residual")
        if fitted is not None:
            if features is None:
                raise ValueError(
                    "this quality gate scores pooled features: pass them (lesion.models.features.captured_features)"
                )
            scores, limit = feature_residual(features, fitted).tolist(), fitted["max_residual"]
        elif self.thresholds.get("max_energy") is not None:
            scores, limit = energy(logits).tolist(), self.thresholds["max_energy"]
        else:
            return [None] * len(logits)
        return [("not_skin", RETAKE["not_skin"]) if s > limit else None for s in scores]
