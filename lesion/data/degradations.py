"""Phone-camera degradations at graded severities (0 = identity), applied at the model's input size (the photo is
resized as preprocessing resizes it, then degraded), so a severity means the same on a 200x150 dermoscopy image and on
a 12-megapixel phone photo (a 2-pixel blur or a noise of sigma 16 would vanish in the downscale of the latter)."""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np


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
