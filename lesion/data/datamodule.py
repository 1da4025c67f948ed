"""The datamodule base every dataset shares: one path for bad-image checks, splits, caching, sampling and loading."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm.auto import tqdm

from lesion.data.cache import ImageCache
from lesion.data.readers import BadImageError, BadImagesError
from lesion.data.samplers import BalancedSampler, EpochSampler, UndersampleSampler
from lesion.data.splits import (
    CALIBRATION,
    SPLITS,
    _first,
    assign_splits,
    carve_calibration,
    read_split_file,
    write_split_file,
)
from lesion.data.transforms import LesionTransforms

log = logging.getLogger(__name__)


class LesionDataset(Dataset):
    """Image ids and labels (numpy arrays, cheap to share with workers) -> {"image", "label", "image_id"}.

    `sizes`: the training size (height, width) of each of the first epochs (`data.train_sizes`); later epochs, and
    keys without an epoch, get the input size.
    """

    def __init__(
        self, image_ids, labels, read, transforms: LesionTransforms, train: bool, cache=None, skip_bad=False, sizes=()
    ):
        self.image_ids = np.asarray(image_ids, dtype=str)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.read, self.transforms, self.train, self.cache, self.skip_bad = read, transforms, train, cache, skip_bad
        self.sizes = [tuple(size) for size in sizes]

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, key: int | tuple[int, ...]) -> dict | None:
        """`key` is an index, (index, augmentation seed, epoch) from an EpochSampler, or (index, augmentation seed)."""
        index, seed, *epoch = key if isinstance(key, tuple) else (key, None)
        size = self.sizes[epoch[0]] if epoch and epoch[0] < len(self.sizes) else None
        image_id = str(self.image_ids[index])
        image = self.cache.get(image_id) if self.cache is not None else None
        if image is None:
            try:
                image = self.transforms.preprocess(image=self.read(image_id))["image"]
            except BadImageError as err:
                if not self.skip_bad:
                    raise
                log.warning("data.on_bad_image=skip: skipping %s", err)
                return None
            if self.cache is not None:
                self.cache.put(image_id, image)
        tensor = self.transforms.finish(image, train=self.train, seed=seed, size=size)
        return {"image": tensor, "label": int(self.labels[index]), "image_id": image_id}


def collate(batch: list[dict | None]) -> dict | None:
    """default_collate, leaving out the images that data.on_bad_image=skip turned into None."""
    kept = [item for item in batch if item is not None]
    return default_collate(kept) if kept else None


class LesionDataModule(L.LightningDataModule, ABC):
    """Subclasses set `classes`, `malignant` and `group_column`, and implement `load_frame` and `reader`.

    `load_frame` returns every image with `image_id`, `label` (class index), any metadata, and a `split` column where
    the dataset has official splits. Splits it lacks are carved from its training rows, stratified and grouped.
    """

    classes: tuple[str, ...] = ()
    malignant: tuple[str, ...] = ()
    group_column: str | None = None
    train_only: tuple[str, ...] = ()  # frame columns that tell the label (stack.py never reads them)
    declared_groups: tuple[str, ...] = ()  # frame columns the data itself sets as groupings (reported per part)

    def __init__(
        self,
        data_config: dict,
        transforms: dict | None = None,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        num_workers: int = 0,
        persistent_workers: bool = True,
        seed: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_file: str | None = None,
        sampler: str | None = None,
        neg_ratio: float | None = None,
        cache: bool = False,
        cache_dir: str | None = None,
        on_bad_image: str = "error",
        verify_images: bool = False,
        external: bool = False,
        train_sizes: list | None = None,
        calibration_fraction: float = 0.0,
        provenance: dict | None = None,
    ):
        super().__init__()
        if on_bad_image not in ("error", "skip"):
            raise ValueError(f"data.on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
        if sampler not in (None, "balanced"):
            raise ValueError(f"data.sampler must be null or 'balanced', got {sampler!r}")
        if sampler and neg_ratio:
            raise ValueError("use either data.sampler=balanced or data.neg_ratio, not both")
        self.data_config = data_config
        self.transforms = LesionTransforms(data_config, **(transforms or {}))
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.persistent_workers = persistent_workers and num_workers > 0
        self.seed, self.val_fraction, self.test_fraction, self.split_file = (
            seed,
            val_fraction,
            test_fraction,
            split_file,
        )
        self.sampler, self.neg_ratio = sampler, neg_ratio
        self.cache, self.cache_dir = cache, cache_dir
        self.on_bad_image, self.verify_images = on_bad_image, verify_images
        self.external = external  # every image is a test image: external validation, no train/val carving
        self.train_sizes = _train_sizes(train_sizes)
        if calibration_fraction and external:
            raise ValueError("data.external=true makes every image a test image: drop data.calibration_fraction")
        self.calibration_fraction = float(calibration_fraction or 0.0)
        # dataset, modality, population: what the images are and who is in them, for the model card (data is data)
        self.provenance = dict(provenance or {})
        self.frames: dict[str, pd.DataFrame] | None = None
        self._cache: ImageCache | None = None

    photos = True  # `reader()` gives RGB photos (the quality gate measures them); False for in-memory tensors

    @abstractmethod
    def load_frame(self) -> pd.DataFrame:
        """Every image: `image_id`, `label`, metadata, and `split` where the dataset defines one."""

    @abstractmethod
    def reader(self):
        """A picklable callable image_id -> RGB uint8 HxWx3, with `problems(ids)` for a cheap up-front check."""

    def cache_key(self) -> dict:
        return {"dataset": type(self).__name__, "root": str(Path(getattr(self, "root", ".")).resolve())}

    def carve(self, pool: pd.DataFrame, need: tuple[str, ...]) -> pd.Series:
        """Split names for the training pool, for the splits the dataset does not provide."""
        return assign_splits(pool, need, self.group_column, self.val_fraction, self.test_fraction, self.seed)

    def setup(self, stage: str | None = None) -> None:
        if self.frames is not None:
            return
        frame = self._without_bad_images(self.load_frame().reset_index(drop=True))
        frame["split"] = self._splits(frame)
        names = (*SPLITS, CALIBRATION) if (frame["split"] == CALIBRATION).any() else SPLITS
        self.frames = {s: frame[frame["split"] == s].drop(columns="split").reset_index(drop=True) for s in names}
        self._check_classes()
        if self.cache:
            _, h, w = self.data_config["input_size"]
            key = self.cache_key() | {"preprocess": self.transforms.preprocess_settings()}
            self._cache = ImageCache(key, frame["image_id"].tolist(), (h, w), self.cache_dir)
        log.info("data: %s", self.describe())

    def describe(self) -> dict:
        """The numbers training actually uses: class counts per split and the sampling scheme."""
        counts = {s: dict(zip(self.classes, self.class_counts(s))) for s in self.frames}
        described = {"class_counts": counts, "sampler": self.sampler, "neg_ratio": self.neg_ratio}
        return described | ({"train_sizes": [list(size) for size in self.train_sizes]} if self.train_sizes else {})

    def class_counts(self, split: str = "train") -> list[int]:
        self.setup()
        counts = np.bincount(self.frames[split]["label"].to_numpy(int), minlength=len(self.classes))
        return counts.tolist()

    def save_splits(self, path: str | Path) -> Path:
        self.setup()
        return write_split_file(self.frames, path, self.group_column)

    def dataset(self, split: str, train: bool = False) -> LesionDataset:
        self.setup()
        frame = self.frames[split]
        skip = self.on_bad_image == "skip"
        sizes = self.train_sizes if train else ()
        return LesionDataset(
            frame["image_id"], frame["label"], self.reader(), self.transforms, train, self._cache, skip, sizes
        )

    def train_dataloader(self) -> DataLoader:
        dataset = self.dataset("train", train=True)
        # A resumed fit asks for its loader at the epoch it restarts from.
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        if self.sampler == "balanced":
            sampler = BalancedSampler(dataset.labels, self.seed, epoch)
        elif self.neg_ratio:
            positive = np.isin(dataset.labels, [self.classes.index(m) for m in self.malignant])
            sampler = UndersampleSampler(positive, self.neg_ratio, self.seed, epoch)
        else:
            sampler = EpochSampler(len(dataset), self.seed, epoch)
        return self._loader(dataset, self.batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("val"), self.eval_batch_size)

    @property
    def calibration_split(self) -> str:
        """The split the temperature, Platt map and threshold are fitted on: `calibration` when the run carved one
        (data.calibration_fraction), else `val`, which also chose the epoch."""
        self.setup()
        return CALIBRATION if CALIBRATION in self.frames else "val"

    def calibration_dataloader(self) -> DataLoader:
        return self._loader(self.dataset(self.calibration_split), self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test"), self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def _loader(self, dataset: Dataset, batch_size: int, sampler=None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.persistent_workers,
            collate_fn=collate,
            # Its own generator: making an iterator must not draw from the global RNG that dropout uses.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def _splits(self, frame: pd.DataFrame) -> pd.Series:
        if self.external:
            return pd.Series("test", index=frame.index)
        if self.split_file:
            split = read_split_file(self.split_file, frame["image_id"])
            if self.calibration_fraction and not (split == CALIBRATION).any():
                raise ValueError(
                    f"data.split_file={self.split_file} has no '{CALIBRATION}' rows to go with "
                    f"data.calibration_fraction={self.calibration_fraction}: add them, or drop the fraction"
                )
            return split
        split = frame["split"] if "split" in frame else pd.Series("train", index=frame.index)
        need = tuple(s for s in ("val", "test") if not (split == s).any())
        if need:
            pool = split == "train"
            split = split.copy()
            split[pool] = self.carve(frame[pool], need).to_numpy()
        if self.calibration_fraction and not (split == CALIBRATION).any():
            split = carve_calibration(frame, split, self.calibration_fraction, self.group_column, self.seed)
        return split

    def _without_bad_images(self, frame: pd.DataFrame) -> pd.DataFrame:
        read = self.reader()
        problems = read.problems(frame["image_id"])
        if self.verify_images:
            problems += _decode_all(read, frame["image_id"], skip={p[0] for p in problems})
        if not problems:
            return frame
        listed = [f"{i} ({reason})" for i, _, reason in problems]
        sources = sorted({str(Path(src).parent) if src != "?" else src for _, src, _ in problems})
        if self.on_bad_image == "error":
            raise BadImagesError(
                f"{len(problems)} bad images in {', '.join(sources)}: {_first(listed)}. "
                "Fix or remove them, or set data.on_bad_image=skip to train without them"
            )
        for image_id, source, reason in problems:
            log.warning("data.on_bad_image=skip: skipping %s from %s (%s)", image_id, source, reason)
        log.warning("data.on_bad_image=skip: skipped %d images in all", len(problems))
        return frame[~frame["image_id"].isin({p[0] for p in problems})]

    def _check_classes(self) -> None:
        for split in ("test",) if self.external else self.frames:
            counts = self.class_counts(split)
            empty = [c for c, n in zip(self.classes, counts) if n == 0]
            if empty:
                raise ValueError(
                    f"the {split} split has no images of class {empty} (counts {dict(zip(self.classes, counts))}); "
                    "change data.seed, data.val_fraction/test_fraction or data.split_file so each split has every class"
                )


def _train_sizes(sizes) -> list[tuple[int, int]]:
    """data.train_sizes: one [height, width] per early epoch (a resolution schedule), checked up front."""
    checked = []
    for epoch, entry in enumerate(sizes or []):
        size = tuple(entry) if isinstance(entry, Sequence) and not isinstance(entry, str) else (entry,)
        if len(size) != 2 or not all(isinstance(side, int) and side > 0 for side in size):
            raise ValueError(
                f"data.train_sizes[{epoch}] is {entry!r}; each entry is [height, width] in pixels for one epoch, "
                "e.g. 'data.train_sizes=[[150,200],[150,200]]' (later epochs train at backbone.input_size)"
            )
        checked.append(size)
    return checked


def _decode_all(read, image_ids, skip: set) -> list[tuple[str, str, str]]:
    """A full decode of every image (data.verify_images=true), so all bad ones are named in one error."""
    found = []
    for image_id in tqdm(list(image_ids), desc="verifying images", unit="img"):
        if image_id in skip:
            continue
        try:
            read(image_id)
        except BadImageError as err:
            found.append((image_id, err.source, err.reason))
    return found
