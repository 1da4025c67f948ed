"""The quality gate's numbers: image measures where the lesion is, the feature-residual and energy scores, and the
thresholds fitted from a training run's own images (lesion/serving/quality.py applies them)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

FLAT_STD = 3.0  # grey levels: below this at the input size there is nothing to judge


HIGHLIGHT, SHADOW = 240, 16  # grey levels counted as clipped / crushed


def lesion_region(image: np.ndarray, region: float = 1.0) -> np.ndarray:
    """The centred square whose side is `region` of the image's short side (1.0: the whole image, not only a square)."""
    if not 0 < region <= 1:
        raise ValueError(f"quality.region={region} must be in (0, 1]: the share of the short side judged, 1 = all")
    if region == 1:
        return image
    height, width = image.shape[:2]
    side = max(1, round(region * min(height, width)))
    top, left = (height - side) // 2, (width - side) // 2
    return image[top : top + side, left : left + side]


def image_measures(image: np.ndarray, region: float = 1.0) -> dict[str, float]:
    """Sharpness, contrast and the clipped / crushed shares of an RGB photo already at the model's input size, in its
    `lesion_region`."""
    grey = cv2.cvtColor(np.ascontiguousarray(lesion_region(image, region)), cv2.COLOR_RGB2GRAY)
    return {
        "sharpness": float(cv2.Laplacian(grey, cv2.CV_64F).var()),
        "contrast": float(grey.std()),
        "highlights": float((grey >= HIGHLIGHT).mean()),
        "shadows": float((grey <= SHADOW).mean()),
    }


def energy(logits: torch.Tensor) -> torch.Tensor:
    """The energy score of each row: high for inputs unlike the training data (Liu et al., 2020)."""
    return -torch.logsumexp(logits.float(), dim=-1)


def fit_feature_residual(features: torch.Tensor, components: int) -> dict:
    """The training features' mean and their top `components` principal directions (rows)."""
    features = features.double()
    mean = features.mean(0)
    k = max(1, min(components, features.shape[1] - 1, len(features) - 1))
    _, _, directions = torch.linalg.svd(features - mean, full_matrices=False)
    return {"mean": mean.float(), "directions": directions[:k].float(), "components": k}


def feature_residual(features: torch.Tensor, fitted: dict) -> torch.Tensor:
    """The share (0 to 1) of each feature row's deviation from the training mean that lies outside the fitted
    principal directions (`fit_feature_residual`): the sine of its angle to that subspace."""
    centred = features.double() - fitted["mean"].double()
    inside = centred @ fitted["directions"].double().T
    length = centred.norm(dim=1).clamp_min(1e-12)
    return (1 - (inside.norm(dim=1) / length) ** 2).clamp_min(0).sqrt().float()


def widen_feature_residual(fitted: dict, features: torch.Tensor, components: int) -> dict:
    """A fitted residual reference (`fit_feature_residual`) widened by a site's photos: its principal directions plus
    the top `components` directions of what they leave unexplained in `features` (the site's photos, about the same
    mean), so the site's ordinary photos are not "unlike skin" while what was unlike both still is."""
    mean, directions = fitted["mean"].double(), fitted["directions"].double()
    centred = features.double() - mean
    rest = centred - (centred @ directions.T) @ directions
    k = max(1, min(components, len(features) - 1))
    _, _, extra = torch.linalg.svd(rest, full_matrices=False)
    basis, _ = torch.linalg.qr(torch.cat([directions, extra[:k]]).T)
    return {"mean": mean.float(), "directions": basis.T.float().contiguous(), "components": int(basis.shape[1])}


def fit_quality(
    images: Iterable[np.ndarray],
    to_input_size: Callable[[np.ndarray], np.ndarray],
    val_logits: torch.Tensor,
    settings: dict,
    total: int | None = None,
    features: dict | None = None,
) -> dict:
    """Thresholds from the training images (`images`) and the validation logits; `settings` is train.yaml `quality`.

    features: for `ood: residual`, the pooled features {"train", "val"} (`pooled_features`)."""
    images = tqdm(images, total=total, desc="quality gate", unit="img")
    region = float(settings.get("region", 1.0))
    rows = [image_measures(to_input_size(im), region) for im in images]
    if not rows:
        raise ValueError("the quality gate needs training images to fit its thresholds")
    measures = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    high, ood = settings["exposure_percentile"], settings.get("ood", "energy")
    thresholds = {
        "min_side": int(settings["min_side"]),
        "region": region,
        "min_contrast": FLAT_STD,
        "min_sharpness": float(np.percentile(measures["sharpness"], settings["sharpness_percentile"])),
        "max_highlights": float(max(np.percentile(measures["highlights"], high), settings["exposure_floor"])),
        "max_shadows": float(max(np.percentile(measures["shadows"], high), settings["exposure_floor"])),
        "ood": ood,
        "fitted_on": {"training_images": len(rows), "val_images": len(val_logits)},
        "percentiles": {k: settings[k] for k in ("sharpness_percentile", "exposure_percentile", "ood_percentile")},
    }
    if ood == "energy":
        thresholds["max_energy"] = float(np.percentile(energy(val_logits).numpy(), settings["ood_percentile"]))
    elif ood == "residual":
        if features is None:
            raise ValueError("quality.ood=residual needs the network's pooled features to fit")
        fitted = fit_feature_residual(features["train"], int(settings["ood_components"]))
        val_residual = feature_residual(features["val"], fitted).numpy()
        thresholds["feature_residual"] = fitted | {
            "max_residual": float(np.percentile(val_residual, settings["ood_percentile"]))
        }
        thresholds["fitted_on"]["feature_images"] = len(features["train"])
    else:
        raise ValueError(f"quality.ood must be residual or energy, got {ood!r}")
    return thresholds


def fits_features(settings: dict) -> bool:
    """Whether fitting the gate (train.yaml `quality`) needs the val split's pooled features: `ood: residual`."""
    return bool(settings.get("enabled", True)) and settings.get("ood", "energy") == "residual"
