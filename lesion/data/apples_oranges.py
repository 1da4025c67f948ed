"""The study's apples-vs-oranges sanity set, rendered procedurally and deterministically from a seed (no download)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd

from lesion.data.datamodule import LesionDataModule


def render_fruit(seed: int, index: int, size: int) -> tuple[np.ndarray, int]:
    """One RGB uint8 image and its label (0 apple, 1 orange); the same (seed, index) always gives the same image.

    Apples and oranges differ in hue (red/green/yellow-green vs orange) and skin: apples are smooth with streaks
    and pale lenticels and a stem; oranges have a dimpled peel and a navel. Size, position, lighting and
    background vary.
    """
    rng = np.random.default_rng([seed, index])
    label = index % 2
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    # Background: a random colour with a gradient and texture.
    bg_hsv = np.array([rng.uniform(0, 180), rng.uniform(0, 90), rng.uniform(70, 230)], np.float32)
    gradient = (xx - 0.5) * rng.uniform(-60, 60) + (yy - 0.5) * rng.uniform(-60, 60)
    hsv = np.empty((size, size, 3), np.float32)
    hsv[..., 0] = bg_hsv[0]
    hsv[..., 1] = bg_hsv[1]
    hsv[..., 2] = bg_hsv[2] + gradient + _noise(rng, size, scale=0.15) * 12
    # Fruit: a slightly elliptical ball.
    radius = rng.uniform(0.2, 0.38)
    cx, cy = rng.uniform(radius * 0.8, 1 - radius * 0.8, size=2)
    aspect = rng.uniform(0.88, 1.12)
    dx, dy = (xx - cx) / radius, (yy - cy) / (radius * aspect)
    r2 = dx**2 + dy**2
    inside = np.clip((1.0 - np.sqrt(r2)) * radius * size, 0, 1)  # one-pixel antialiased rim
    nz = np.sqrt(np.clip(1 - r2, 0, 1))
    light = rng.normal(size=3) * [1, 1, 0.3] + [0, 0, 1]
    light /= np.linalg.norm(light)
    shade = np.clip(dx * light[0] + dy * light[1] + nz * light[2], 0, 1)
    if label == 1:
        hue = rng.uniform(10, 19)  # OpenCV hue is degrees / 2: 20-38 degrees, orange
        sat = rng.uniform(190, 255)
        skin = _noise(rng, size, scale=0.025) * 14  # dimpled peel
    else:
        hue = rng.choice([rng.uniform(0, 6), rng.uniform(170, 180), rng.uniform(28, 55)])  # red or green/yellow-green
        sat = rng.uniform(120, 230)
        streaks = np.sin((xx - cx) * rng.uniform(40, 90) + _noise(rng, size, scale=0.2) * 3) * 8
        dots = (rng.random((size, size)) > 0.985).astype(np.float32) * 40  # lenticels
        skin = streaks + cv2.GaussianBlur(dots, (3, 3), 0.7)
    value = 40 + 200 * (0.25 + 0.75 * shade) + skin
    specular = np.clip(shade, 0, 1) ** rng.uniform(20, 60) * rng.uniform(40, 110)
    fruit = np.stack([np.full_like(xx, hue), np.full_like(xx, sat) - specular, value + specular], axis=-1)
    hsv = hsv * (1 - inside[..., None]) + fruit * inside[..., None]
    # Apple stem, orange navel: small dark marks near the top of the fruit.
    mark = np.exp(-(((xx - cx) / 0.015) ** 2 + ((yy - (cy - radius * (0.85 if label == 0 else 0.3))) / 0.03) ** 2))
    hsv[..., 2] -= mark * (90 if label == 0 else 40)
    hsv[..., 0] = np.mod(hsv[..., 0], 180)
    hsv = np.clip(hsv, 0, 255).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), label


def _noise(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """Smooth noise in [-1, 1] with features about `scale` of the image wide."""
    cells = max(2, int(round(1 / scale)))
    coarse = rng.uniform(-1, 1, size=(cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


@dataclass(frozen=True)
class FruitReader:
    """Renders an image id (`fruit_<index>`) on demand, in any worker process."""

    seed: int
    size: int

    def __call__(self, image_id: str) -> np.ndarray:
        return render_fruit(self.seed, int(image_id.rsplit("_", 1)[1]), self.size)[0]

    def problems(self, image_ids) -> list:
        return []  # rendered images cannot be missing or corrupt


class ApplesOrangesDataModule(LesionDataModule):
    """Apples (benign) vs oranges (the positive class); splits use disjoint image indices."""

    classes = ("apple", "orange")
    malignant = ("orange",)

    def __init__(
        self,
        data_config: dict,
        num_train: int = 400,
        num_val: int = 100,
        num_test: int = 200,
        image_size: int = 64,
        **kwargs,
    ):
        super().__init__(data_config, **kwargs)
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.image_size = image_size

    def load_frame(self) -> pd.DataFrame:
        split = np.repeat(list(self.sizes), list(self.sizes.values()))
        index = np.arange(len(split))
        return pd.DataFrame({"image_id": [f"fruit_{i:06d}" for i in index], "label": index % 2, "split": split})

    def reader(self) -> FruitReader:
        return FruitReader(self.seed, self.image_size)

    def cache_key(self) -> dict:
        return super().cache_key() | {"seed": self.seed, "image_size": self.image_size}
