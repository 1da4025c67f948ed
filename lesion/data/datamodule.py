"""The datamodule base every dataset shares: splits as DataFrames, one transform path, loaders, class counts."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import lightning as L
import numpy as np
import pandas as pd
from torch.utils.data import DataLoader, Dataset

from lesion.data.transforms import LesionTransforms

SPLITS = ("train", "val", "test")


class LesionDataset(Dataset):
    """Rows of a split frame (`image_id`, `label`) -> {"image", "label", "image_id"}."""

    def __init__(
        self,
        frame: pd.DataFrame,
        read: Callable[[pd.Series], np.ndarray],
        transforms: LesionTransforms,
        train: bool,
    ):
        self.frame = frame.reset_index(drop=True)
        self.read = read
        self.transforms = transforms
        self.train = train

    def __len__(self) -> int:
        return len(self.frame)

    def __getitem__(self, index: int) -> dict:
        row = self.frame.iloc[index]
        image = self.transforms(self.read(row), train=self.train)
        return {"image": image, "label": int(row["label"]), "image_id": str(row["image_id"])}


class LesionDataModule(L.LightningDataModule, ABC):
    """Subclasses set `classes` and `malignant` and implement `split_frames` and `reader`."""

    classes: tuple[str, ...] = ()
    malignant: tuple[str, ...] = ()

    def __init__(
        self,
        data_config: dict,
        transforms: dict | None = None,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        num_workers: int = 0,
    ):
        super().__init__()
        self.transforms = LesionTransforms(data_config, **(transforms or {}))
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.frames: dict[str, pd.DataFrame] | None = None

    @abstractmethod
    def split_frames(self) -> dict[str, pd.DataFrame]:
        """{"train"|"val"|"test": DataFrame with at least `image_id` and `label` (class index)}."""

    @abstractmethod
    def reader(self) -> Callable[[pd.Series], np.ndarray]:
        """A picklable callable that returns a row's image as RGB uint8 HxWx3."""

    def setup(self, stage: str | None = None) -> None:
        if self.frames is None:
            self.frames = self.split_frames()

    def class_counts(self, split: str = "train") -> list[int]:
        self.setup()
        counts = self.frames[split]["label"].value_counts()
        return [int(counts.get(i, 0)) for i in range(len(self.classes))]

    def dataset(self, split: str, train: bool = False) -> LesionDataset:
        self.setup()
        return LesionDataset(self.frames[split], self.reader(), self.transforms, train=train)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("train", train=True), self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("val"), self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test"), self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool = False) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
