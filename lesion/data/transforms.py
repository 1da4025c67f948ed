"""Image transforms (albumentations): fixed preprocessing, random augmentation, normalisation to a tensor."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

INTERPOLATION = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST}


class LesionTransforms:
    """Resize to the backbone's input (area averaging when downscaling), CLAHE, the study's flips and rotation,
    optional phone-camera conditions, normalisation from the backbone's pretrained config.

    `preprocess` is deterministic (resize, and CLAHE when fixed), so its output can be cached; `finish` adds the
    random augmentation (training only) and normalises. CLAHE runs through OpenCV on the L channel of LAB. With
    `clahe_p=1` it is fixed preprocessing for every split (the study); with `clahe_p<1` it is a training-only
    augmentation (the ISIC 2024 winners used clip 4.0, p 0.7).
    """

    def __init__(
        self,
        data_config: dict,
        hflip: bool = True,
        vflip: bool = True,
        rotate: float = 0.0,
        scale: float = 0.0,
        translate: float = 0.0,
        clahe: bool = False,
        clahe_clip_limit: float = 2.0,
        clahe_tile_grid: int = 8,
        clahe_p: float = 1.0,
        phone: bool = False,
        phone_p: float = 0.5,
        color_constancy: bool = False,
        color_constancy_power: float = 6.0,
        color_jitter: float = 0.0,
    ):
        _, height, width = data_config["input_size"]
        self.interpolation = data_config.get("interpolation", "bilinear")
        self.fixed_clahe = clahe and clahe_p >= 1
        self.size = (height, width)
        self.clahe = (clahe_clip_limit, clahe_tile_grid) if clahe else None
        clahe_op = A.CLAHE(
            clip_limit=(clahe_clip_limit, clahe_clip_limit),
            tile_grid_size=(clahe_tile_grid, clahe_tile_grid),
            p=1.0 if self.fixed_clahe else clahe_p,
        )
        # Downscaling averages areas (a camera pipeline's anti-aliasing: a 12-megapixel photo keeps no sensor noise at
        # 224 px, where cubic kept ~10x more); upscaling keeps the backbone's interpolation.
        resize = self._resize_to((height, width))
        self.color_constancy = color_constancy_power if color_constancy else None
        constancy = [A.Lambda(image=ShadesOfGray(color_constancy_power))] if color_constancy else []
        self.resize = A.Compose([resize])
        self.preprocess = A.Compose([resize, *constancy] + ([clahe_op] if self.fixed_clahe else []))
        augment: list[A.BasicTransform] = []
        if clahe and not self.fixed_clahe:
            augment.append(clahe_op)
        if hflip:
            augment.append(A.HorizontalFlip(p=0.5))
        if vflip:
            augment.append(A.VerticalFlip(p=0.5))
        if scale or translate:  # one resampling for rotation, zoom and shift
            augment.append(
                A.Affine(
                    scale=(1 - scale, 1 + scale),
                    translate_percent=(-translate, translate),
                    rotate=(-rotate, rotate),
                    border_mode=cv2.BORDER_REFLECT_101,
                    p=1.0,
                )
            )
        elif rotate:
            augment.append(A.Rotate(limit=(-rotate, rotate), border_mode=cv2.BORDER_REFLECT_101, p=1.0))
        if color_jitter:
            augment.append(A.ColorJitter(color_jitter, color_jitter, color_jitter, color_jitter / 4, p=0.8))
        if phone:
            augment += phone_conditions(phone_p)
        self.augment = A.Compose(augment)
        self._augment_seed: int | None = None
        self._resizers: dict[tuple[int, int], A.Resize] = {}
        self.normalize = A.Compose(
            [A.Normalize(mean=data_config["mean"], std=data_config["std"], max_pixel_value=255.0), ToTensorV2()]
        )

    def _resize_to(self, size: tuple[int, int]) -> A.Resize:
        return A.Resize(*size, interpolation=INTERPOLATION[self.interpolation], area_for_downscale="image")

    def to_input_size(self, image: np.ndarray) -> np.ndarray:
        """The photo at the model's input size, resized exactly as `preprocess` resizes it (then a no-op there)."""
        return self.resize(image=image)["image"]

    def preprocess_settings(self) -> dict:
        """Everything that shapes `preprocess` output, for cache keys."""
        settings = {
            "size": list(self.size),
            "interpolation": self.interpolation,
            "downscale": "area",
            "clahe": self.fixed_clahe and self.clahe,
        }
        return settings | ({"color_constancy": self.color_constancy} if self.color_constancy else {})

    def finish(
        self, image: np.ndarray, train: bool, seed: int | None = None, size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Augment (training) and normalise. albumentations keeps its own RNG, deaf to global seeds: `seed` (one
        per image, from the sampler) or else torch's seed makes the augmentation reproducible. `size` (height, width):
        a training size other than the input size (`data.train_sizes`), resized to before augmenting."""
        size = tuple(size) if size is not None else None
        if size is not None and size != image.shape[:2]:
            if size not in self._resizers:
                self._resizers[size] = self._resize_to(size)
            image = self._resizers[size](image=image)["image"]
        if train:
            seed = seed if seed is not None else torch.initial_seed() % 2**32
            if seed != self._augment_seed:
                self.augment.set_random_seed(seed)
                self._augment_seed = seed
            image = self.augment(image=image)["image"]
        return self.normalize(image=image)["image"]

    def __call__(self, image: np.ndarray, train: bool) -> torch.Tensor:
        """RGB uint8 HxWx3 -> normalised float CxHxW."""
        return self.finish(self.preprocess(image=image)["image"], train)


class ShadesOfGray:
    """Shades of Gray colour constancy (Finlayson and Trezzi, 2004), the fixed preprocessing of several ISIC 2018-2019
    winners (e.g. Gessert et al. 2020): the illuminant is the Minkowski p-norm mean of each channel, and each channel
    is scaled so that it becomes grey. p=1 is grey world, p=inf max-RGB. RGB uint8 in and out."""

    def __init__(self, power: float = 6.0):
        self.power = power

    def __call__(self, image: np.ndarray, **_) -> np.ndarray:
        pixels = image.astype(np.float32).reshape(-1, 3)
        illuminant = np.power(np.mean(np.power(pixels, self.power), axis=0), 1.0 / self.power)
        gains = np.linalg.norm(illuminant) / (np.sqrt(3.0) * np.maximum(illuminant, 1e-6))
        return np.clip(image.astype(np.float32) * gains, 0, 255).astype(np.uint8)


def phone_conditions(p: float) -> list[A.BasicTransform]:
    """Phone-camera conditions: exposure, white balance, focus/shake blur, low resolution, JPEG compression."""
    return [
        A.RandomBrightnessContrast(brightness_limit=0.25, contrast_limit=0.25, p=p),
        A.PlanckianJitter(mode="blackbody", p=p),
        A.OneOf([A.GaussianBlur(blur_limit=(3, 7)), A.MotionBlur(blur_limit=(3, 9))], p=p),
        A.Downscale(scale_range=(0.35, 0.8), p=p),
        A.ImageCompression(quality_range=(30, 90), p=p),
    ]
