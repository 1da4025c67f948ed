"""Image transforms (albumentations): fixed preprocessing, random augmentation, normalisation to a tensor."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

INTERPOLATION = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST}


class LesionTransforms:
    """Resize to the backbone's input, CLAHE, the study's flips and rotation, normalisation from the backbone.

    CLAHE runs through OpenCV on the L channel of LAB. With `clahe_p=1` it is fixed preprocessing, applied to every
    split (the study); with `clahe_p<1` it is a training-only augmentation (ISIC 2024 winners: clip 4.0, p 0.7).
    """

    def __init__(
        self,
        data_config: dict,
        hflip: bool = True,
        vflip: bool = True,
        rotate: float = 0.0,
        clahe: bool = False,
        clahe_clip_limit: float = 2.0,
        clahe_tile_grid: int = 8,
        clahe_p: float = 1.0,
    ):
        _, height, width = data_config["input_size"]
        interpolation = INTERPOLATION[data_config.get("interpolation", "bilinear")]
        clahe_op = A.CLAHE(
            clip_limit=(clahe_clip_limit, clahe_clip_limit),
            tile_grid_size=(clahe_tile_grid, clahe_tile_grid),
            p=1.0 if clahe_p >= 1 else clahe_p,
        )
        fixed_clahe = clahe and clahe_p >= 1
        self.preprocess = A.Compose(
            [A.Resize(height, width, interpolation=interpolation)] + ([clahe_op] if fixed_clahe else [])
        )
        augment: list[A.BasicTransform] = []
        if clahe and not fixed_clahe:
            augment.append(clahe_op)
        if hflip:
            augment.append(A.HorizontalFlip(p=0.5))
        if vflip:
            augment.append(A.VerticalFlip(p=0.5))
        if rotate:
            augment.append(A.Rotate(limit=(-rotate, rotate), border_mode=cv2.BORDER_REFLECT_101, p=1.0))
        self.augment = A.Compose(augment)
        self.normalize = A.Compose(
            [A.Normalize(mean=data_config["mean"], std=data_config["std"], max_pixel_value=255.0), ToTensorV2()]
        )

    def __call__(self, image: np.ndarray, train: bool) -> torch.Tensor:
        """RGB uint8 HxWx3 -> normalised float CxHxW."""
        image = self.preprocess(image=image)["image"]
        if train:
            image = self.augment(image=image)["image"]
        return self.normalize(image=image)["image"]
