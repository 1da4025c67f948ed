"""A trained checkpoint applied to photos: the same preprocessing as evaluation, the stored temperature and threshold,
a plain-language risk band, the checkpoint's own TTA and Grad-CAM. Shared by predict.py, app.py and export.py."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from lesion.data.readers import BadImageError, decode
from lesion.models.loading import eval_transforms
from lesion.models.module import LesionClassifier
from lesion.models.tta import tta_mode

log = logging.getLogger(__name__)
DISCLAIMER = (
    "This is not a diagnosis. It is a research model's estimate from one photo; "
    "only a doctor can examine a skin spot. If a spot worries you, see a doctor whatever this says."
)
DEFAULT_BANDS = {
    "low": "low: no sign of concern in this photo",
    "elevated": "elevated: please show this spot to a doctor",
}


CROPS = ("none", "center")


def center_square(image: np.ndarray) -> np.ndarray:
    """The largest centred square of a photo: the training images are close-ups with the lesion in the middle."""
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return image[top : top + side, left : left + side]


@dataclass
class Result:
    """One photo's outcome: a prediction, or the reason it could not be read."""

    file: str
    p_malignant: float | None = None
    decision: str | None = None
    risk_band: str | None = None
    message: str | None = None
    quality: str | None = None  # why the quality gate refused the photo (decision "retake"), e.g. "blurred"
    error: str | None = None
    overlay: np.ndarray | None = field(default=None, repr=False)

    def row(self) -> dict:
        values = {k: v for k, v in self.__dict__.items() if k != "overlay"}
        return values | {"note": DISCLAIMER}


def calibrated_tta(model, tta: bool | str | None) -> str | None:
    """The test-time augmentation a consumer of `model` runs: the model's own (`model.tta`), under which its
    temperature, Platt map and threshold were fitted. `tta` (predict.py's and app.py's key) may only confirm it."""
    own = tta_mode(model.hparams.get("tta", False))
    if tta is not None and tta_mode(tta, key="tta") != own:
        raise ValueError(
            f"tta={tta}: this checkpoint's temperature and threshold were fitted under model.tta={own or 'false'}, "
            "and its decisions hold for that score only. Leave tta unset (null) to use it as calibrated, or run "
            f"`python eval.py ckpt_path=<this checkpoint> tta={tta}` first: it fits an operating point under that TTA "
            "on the val split and writes ensemble.ckpt, which you pass here."
        )
    return own


class Screener:
    """Calibrated P(malignant), decision and risk band for RGB photos (uint8 HxWx3), with the model loaded once.

    tta: None (default) runs the model's own test-time augmentation (`model.tta`: the one its temperature and threshold
    were fitted under). Another value must name that same mode: a threshold fitted on one score does not hold for
    another, so a different TTA is refused with the way to calibrate one (`eval.py ckpt_path=... tta=...`).
    gradcam: also return a Grad-CAM overlay of what drove P(malignant) (see `lesion.serving.explain`).
    """

    def __init__(
        self,
        model: LesionClassifier,
        tta: bool | str | None = None,
        gradcam: bool = False,
        max_pixels: int | None = 100_000_000,
        bands: dict[str, str] | None = None,
        quality: dict | None = None,
        crop: str = "none",
        overlay_side: int | None = None,
    ):
        """quality: predict.yaml / app.yaml `quality` (enabled, min_side); the thresholds are the checkpoint's.
        crop: `none`, or `center`: the centred square of each photo (for photos nobody framed).
        overlay_side: the Grad-CAM overlay's longest side in pixels (the photo shrunk to it first); None: the photo's
        own size (a 12-megapixel overlay is drawn from float copies of the photo, 144 MB each)."""
        if crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
        if overlay_side is not None and (
            isinstance(overlay_side, bool) or not isinstance(overlay_side, int) or overlay_side < 1
        ):
            raise ValueError(
                f"overlay_side={overlay_side!r}: give the overlay's longest side in pixels (e.g. 1024), or null"
            )
        self.crop = crop
        from lesion.serving.quality import QualityGate

        self.model = model.eval()
        self.transforms = eval_transforms(model)
        self.gate = None
        if quality and quality["enabled"]:
            thresholds = model.deployment.quality
            self.gate = QualityGate(thresholds, self.transforms.to_input_size, quality["min_side"])
        self.tta = calibrated_tta(model, tta)
        self.max_pixels = max_pixels
        self.bands = dict(DEFAULT_BANDS, **(bands or {}))
        self.threshold = float(model.deployment.threshold)
        self.explainer, self.overlay_side = None, overlay_side
        if gradcam:
            from lesion.serving.explain import GradCam  # grad-cam is imported only when asked for

            self.explainer = GradCam(model)

    @classmethod
    def from_config(cls, model: LesionClassifier, config: dict) -> Screener:
        """The screener an entry point's config asks for (predict.yaml, app.yaml: tta, gradcam, max_pixels, bands,
        quality, and where they have them, crop and overlay_side)."""
        return cls(
            model,
            config["tta"],
            config["gradcam"],
            config["max_pixels"],
            config.get("bands"),
            config.get("quality"),
            config.get("crop", "none"),
            config.get("overlay_side"),
        )

    def read(self, data: bytes, name: str) -> np.ndarray:
        """Encoded bytes -> RGB uint8 (cropped as `crop` says), or BadImageError naming `name` (empty, not an image,
        truncated, too big)."""
        image = decode(data, Path(name).name, name, self.max_pixels)
        return center_square(image) if self.crop == "center" else image

    def tensor(self, image: np.ndarray) -> torch.Tensor:
        return self.transforms(image, train=False)

    @torch.no_grad()
    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Calibrated P(malignant) for a normalised batch (under the model's own TTA)."""
        return self.scores(batch)[0]

    @torch.no_grad()
    def scores(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """`probabilities`, and the logits and (when the quality gate scores them) pooled features of the photos as
        they are: the gate's out-of-distribution score."""
        from lesion.models.features import captured_features

        wanted = self.gate is not None and self.gate.needs_features
        with captured_features(self.model) if wanted else nullcontext(lambda: None) as captured:
            logits = self.model(batch).float()
            features = captured()
        probs = self.model.scores(logits)[1]
        return probs, logits, features

    def describe(self, name: str, p: float) -> Result:
        elevated = p > self.threshold
        band = "elevated" if elevated else "low"
        return Result(
            file=name,
            p_malignant=p,
            decision="refer" if elevated else "no referral",
            risk_band=band,
            message=self.bands[band],
        )

    def __call__(self, images: list[np.ndarray], names: list[str]) -> list[Result]:
        """A Result per photo: a probability and decision, or, when the quality gate refuses it, `decision: retake`
        with the reason (never a probability)."""
        results: list[Result | None] = [None] * len(images)
        # Resized once: the gate measures and the model sees the same input-size photo (preprocessing's own resize
        # is then a copy; a 12-megapixel photo's area resize is most of its preprocessing).
        sized = [self.transforms.to_input_size(image) for image in images]
        for i, image in enumerate(images):
            refused = self.gate.check_image(image, sized[i]) if self.gate else None
            if refused:
                results[i] = self.retake(names[i], refused)
        keep = [i for i, r in enumerate(results) if r is None]
        if not keep:
            return results
        batch = torch.stack([self.tensor(sized[i]) for i in keep])
        probabilities, logits, features = self.scores(batch)
        unlike = self.gate.check_outputs(logits, features) if self.gate else [None] * len(keep)
        for j, i in enumerate(keep):
            if unlike[j]:
                results[i] = self.retake(names[i], unlike[j])
                continue
            results[i] = self.describe(names[i], float(probabilities[j]))
            if self.explainer is not None:
                results[i].overlay = self.explainer.overlay(shrunk(images[i], self.overlay_side), batch[j])
        return results

    @staticmethod
    def retake(name: str, refused: tuple[str, str]) -> Result:
        return Result(file=name, decision="retake", quality=refused[0], message=refused[1])

    def screen_files(self, paths: list[Path], batch_size: int = 16, progress=None) -> list[Result]:
        """Every file gets a Result, in order: bad ones carry their error and the rest are still screened."""
        return list(self.iter_files(paths, batch_size, progress))

    def iter_files(self, paths: list[Path], batch_size: int = 16, progress=None) -> Iterator[Result]:
        """`screen_files` as a stream: a Result per file, in order, as each batch is done; at most `batch_size`
        decoded photos are held at once, so a folder of any size runs in the memory of one batch (predict.py writes
        each overlay and lets it go)."""
        pending: list[tuple[np.ndarray, str]] = []
        done: list[Result | None] = []  # the batch's results in file order; None: a photo still pending

        def flush() -> Iterator[Result]:
            out = iter(self([im for im, _ in pending], [n for _, n in pending]))
            yield from (r if r is not None else next(out) for r in done)
            pending.clear()
            done.clear()

        for path in paths:
            try:
                pending.append((self.read(path.read_bytes(), str(path)), str(path)))
                done.append(None)
            except (BadImageError, OSError) as err:
                done.append(Result(file=str(path), error=str(err)))
            if len(pending) == batch_size:
                yield from flush()
            if progress is not None:
                progress.update(1)
        yield from flush()


def shrunk(image: np.ndarray, side: int | None) -> np.ndarray:
    """The photo with its longest side at most `side` pixels (area averaging); unchanged when smaller or None."""
    longest = max(image.shape[:2])
    if side is None or longest <= side:
        return image
    scale = side / longest
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)
