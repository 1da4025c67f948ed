"""Synthetic in-memory tensors, already normalised: for benchmarks that must not measure the image pipeline."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from lesion.data.datamodule import LesionDataModule


class TensorDataset(Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: int | tuple[int, int, int]) -> dict:
        index = key[0] if isinstance(key, tuple) else key
        return {"image": self.images[index], "label": int(self.labels[index]), "image_id": f"synthetic_{index}"}


class SyntheticDataModule(LesionDataModule):
    """`num_images` random normalised tensors at the backbone's input size, split train/val/test 8:1:1."""

    classes = ("benign", "malignant")
    malignant = ("malignant",)
    photos = False  # tensors, not images: nothing for the quality gate to measure

    def __init__(self, data_config: dict, num_images: int = 320, **kwargs):
        super().__init__(data_config, **kwargs)
        generator = torch.Generator().manual_seed(self.seed)
        _, h, w = data_config["input_size"]
        self.images = torch.randn(num_images, 3, h, w, generator=generator)
        self.labels = torch.arange(num_images) % 2  # alternating, so every split holds both classes

    def load_frame(self) -> pd.DataFrame:
        n = len(self.labels)
        split = np.where(np.arange(n) < 0.8 * n, "train", np.where(np.arange(n) < 0.9 * n, "val", "test"))
        return pd.DataFrame({"image_id": np.arange(n).astype(str), "label": self.labels.numpy(), "split": split})

    def reader(self):
        return _NoFiles()

    def dataset(self, split: str, train: bool = False) -> TensorDataset:
        self.setup()
        rows = torch.tensor(self.frames[split]["image_id"].astype(int).to_numpy())  # a copy: pandas lends it read-only
        return TensorDataset(self.images[rows], self.labels[rows])


class _NoFiles:
    def problems(self, image_ids) -> list:
        return []
