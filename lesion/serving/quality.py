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
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import cv2
import numpy as np
import torch
from torch import nn
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


def classifier_layers(model: nn.Module) -> list[nn.Linear]:
    """The last nn.Linear of each evaluation network (one per ensemble member): its input is the pooled feature."""
    layers = []
    for member in getattr(model, "members", None) or [model]:
        linears = [m for m in member.eval_net.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(f"{type(member.eval_net).__name__} has no nn.Linear classifier: set quality.ood=energy")
        layers.append(linears[-1])
    return layers


@contextmanager
def captured_features(model: nn.Module) -> Iterator[Callable[[int], torch.Tensor]]:
    """Within the block, the returned function gives the pooled features (members' side by side) of the identity view
    of each batch that went through `model` since the block began: `features(batches=1)`. Every batch runs the same
    views (one, flip TTA's four or dihedral TTA's eight, identity first), so a batch's identity view is the first of its
    passes."""
    layers = classifier_layers(model)
    seen: list[list[torch.Tensor]] = [[] for _ in layers]
    hooks = [
        layer.register_forward_pre_hook(lambda _, args, i=i: seen[i].append(args[0].detach().float().flatten(1)))
        for i, layer in enumerate(layers)
    ]

    def features(batches: int = 1) -> torch.Tensor:
        views, rest = divmod(len(seen[0]), batches)
        if rest or not views:
            raise RuntimeError(f"{len(seen[0])} forward passes do not split into {batches} batches of equal views")
        return torch.cat([torch.cat(s[::views]) for s in seen], dim=1).cpu()

    try:
        yield features
    finally:
        for hook in hooks:
            hook.remove()


@torch.no_grad()
def pooled_features(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """The evaluation networks' pooled features of a normalised batch (no TTA)."""
    device = next(model.parameters()).device
    with captured_features(model) as features:
        for member in getattr(model, "members", None) or [model]:
            net, mode = member.eval_net, member.eval_net.training
            net.eval()(batch.to(device))  # eval-mode BatchNorm, as at inference
            net.train(mode)
        return features()


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
                    "this quality gate scores pooled features: pass them (lesion.serving.quality.captured_features)"
                )
            scores, limit = feature_residual(features, fitted).tolist(), fitted["max_residual"]
        elif self.thresholds.get("max_energy") is not None:
            scores, limit = energy(logits).tolist(), self.thresholds["max_energy"]
        else:
            return [None] * len(logits)
        return [("not_skin", RETAKE["not_skin"]) if s > limit else None for s in scores]
