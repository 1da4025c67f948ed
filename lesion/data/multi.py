"""Several data configs trained as one (`data=multi`): each source keeps its own layout and carves its own grouped
splits, labels map onto one class list, and every image keeps its `source` and `modality` in the frame."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from lesion.data.datamodule import LesionDataModule
from lesion.data.samplers import DrawSampler
from lesion.data.splits import CALIBRATION, SPLITS, _first

SOURCE_KEYS = ("weight", "modality", "class_map")  # a source block's own keys; the rest builds its datamodule


@dataclass
class Source:
    """One data config of a multi-source run: its datamodule and what the run adds to it."""

    datamodule: LesionDataModule
    weight: float | None = None  # share of each training epoch's draws; None: a size-proportional part of the rest
    modality: str | None = None  # e.g. dermoscopy, clinical; None: the source's name
    class_map: dict[str, str] | None = field(default_factory=dict)  # source class -> the run's class (diagnosis)

    def __post_init__(self):
        self.class_map = dict(self.class_map or {})


class MultiReader:
    """Dispatches an image id to the reader of the source it came from; picklable for DataLoader workers."""

    def __init__(self, readers: dict, source_of: dict[str, str]):
        self.readers, self.source_of = readers, source_of

    def __call__(self, image_id: str) -> np.ndarray:
        return self.readers[self.source_of[image_id]](image_id)

    def problems(self, image_ids) -> list[tuple[str, str, str]]:
        ids = pd.Series(list(image_ids), dtype=str)
        found = []
        for key, reader in self.readers.items():
            found += reader.problems(ids[ids.map(self.source_of) == key].tolist())
        return found


class MultiDataModule(LesionDataModule):
    """The union of `sources` (name -> Source, built by `lesion.data.build_datamodule` from `data.sources`).

    task: `binary` (each source's malignant classes vs the rest) or `diagnosis` (the run's `classes`, each source's
    labels renamed by its `class_map`; `malignant`: the run's malignant classes). A source's malignant class must map
    to a malignant class and a benign one to a benign one, so P(malignant) means the same for every source.
    Sampling: sources with a `weight` take that share of each epoch's draws (with replacement; sources without one
    share the rest in proportion to their images), so 200 phone photos are not drowned by 7,000 dermoscopy images.
    """

    declared_groups = ("source", "modality")  # set by load_frame: reported per part however small

    def __init__(
        self,
        data_config: dict,
        sources: dict[str, Source],
        task: str = "binary",
        classes: list[str] | None = None,
        malignant: list[str] | None = None,
        **kwargs,
    ):
        super().__init__(data_config, **kwargs)
        if not sources:
            raise ValueError("data.sources is empty: name at least one data config (data.sources.<name>: {...})")
        if task not in ("binary", "diagnosis"):
            raise ValueError(f"data.task must be 'binary' or 'diagnosis', got {task!r}")
        if self.sampler or self.neg_ratio:
            weighted = [k for k, s in sources.items() if s.weight is not None]
            if weighted:
                raise ValueError(f"data.sampler / data.neg_ratio and source weights ({weighted}) both set: use one")
        for source in sources.values():  # the run's calibration split is carved from each source, like its val
            if self.calibration_fraction and not source.datamodule.calibration_fraction:
                source.datamodule.calibration_fraction = self.calibration_fraction
        self.sources, self.task = sources, task
        if task == "binary":
            self.classes, self.malignant = ("benign", "malignant"), ("malignant",)
        else:
            if not classes:
                raise ValueError("data.task=diagnosis with several sources needs data.classes, the run's class list")
            self.classes = tuple(classes)
            self.malignant = tuple(malignant) if malignant else self._mapped_malignant()
        self._mapping = {key: self._label_mapping(key, source) for key, source in sources.items()}
        self.photos = all(s.datamodule.photos for s in sources.values())

    def load_frame(self) -> pd.DataFrame:
        parts = []
        for key, source in self.sources.items():
            source.datamodule.setup()
            for split in (s for s in (*SPLITS, CALIBRATION) if s in source.datamodule.frames):
                part = source.datamodule.frames[split].copy()
                part["label"] = self._mapping[key][part["label"].to_numpy(int)]
                part["split"], part["source"], part["modality"] = split, key, source.modality or key
                parts.append(part)
        frame = pd.concat(parts, ignore_index=True)
        repeated = frame["image_id"][frame["image_id"].duplicated()]
        if len(repeated):
            owners = frame[frame["image_id"].isin(set(repeated))].groupby("image_id")["source"].unique()
            listed = [f"{i} ({', '.join(s)})" for i, s in owners.items()]
            raise ValueError(
                f"image ids occur in more than one source: {_first(listed)}. Each image must come from one source: "
                "drop the repeated images from one of them, or keep only one of those data configs"
            )
        self._source_of = dict(zip(frame["image_id"], frame["source"]))
        return frame

    def reader(self) -> MultiReader:
        if not hasattr(self, "_source_of"):  # set by load_frame, which setup() runs first
            self.setup()
        return MultiReader({k: s.datamodule.reader() for k, s in self.sources.items()}, self._source_of)

    def cache_key(self) -> dict:
        return {
            "dataset": type(self).__name__,
            "sources": {k: s.datamodule.cache_key() for k, s in self.sources.items()},
        }

    def describe(self) -> dict:
        per_source = {}
        for key in self.sources:
            per_source[key] = {s: int((self.frames[s]["source"] == key).sum()) for s in SPLITS}
        return super().describe() | {"sources": per_source, "source_shares": self.source_shares()}

    def source_shares(self) -> dict[str, float]:
        """Each source's share of a training epoch's draws: sources with a weight take that share (weights are
        normalised when every source has one); the others split what is left in proportion to their images."""
        self.setup()
        train = self.frames["train"]["source"]
        sizes = {k: int((train == k).sum()) for k in self.sources}
        weights = {k: s.weight for k, s in self.sources.items() if s.weight is not None}
        bad = {k: w for k, w in weights.items() if w < 0 or (w > 0 and sizes[k] == 0)}
        rest = [k for k in self.sources if k not in weights]
        if bad or (rest and sum(weights.values()) > 1) or not sum(weights.values()) + sum(sizes[k] for k in rest):
            raise ValueError(
                f"data.sources.<name>.weight: got {weights} for training images {sizes}. Weights are shares of each "
                "epoch's draws: >= 0, on sources with training images, summing to at most 1 when some sources "
                "have none (they share the rest by size)"
            )
        if not rest:
            total = sum(weights.values())
            return {k: w / total for k, w in weights.items()}
        left, pool = 1 - sum(weights.values()), sum(sizes[k] for k in rest)
        return weights | {k: left * sizes[k] / pool if pool else 0.0 for k in rest}

    def train_dataloader(self):
        if all(s.weight is None for s in self.sources.values()):
            return super().train_dataloader()
        dataset = self.dataset("train", train=True)
        sources = self.frames["train"]["source"]
        shares = self.source_shares()
        p = sources.map(lambda k: shares[k] / (sources == k).sum()).to_numpy(float)
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        return self._loader(dataset, self.batch_size, sampler=DrawSampler(p / p.sum(), self.seed, epoch))

    def _label_mapping(self, key: str, source: Source) -> np.ndarray:
        """Source class index -> the run's class index, with errors that name the source and the fix."""
        module = source.datamodule
        if self.task == "binary":
            return np.array([int(c in module.malignant) for c in module.classes])
        renamed = [source.class_map.get(c, c) for c in module.classes]
        unknown = sorted({c for c in renamed if c not in self.classes})
        if unknown:
            raise ValueError(
                f"data.sources.{key}: classes {unknown} are not among data.classes={list(self.classes)}; map them with "
                f"data.sources.{key}.class_map (e.g. data.sources.{key}.class_map.{unknown[0]}=<one of data.classes>)"
            )
        clash = [
            f"{c} -> {r}" for c, r in zip(module.classes, renamed) if (c in module.malignant) != (r in self.malignant)
        ]
        if clash:
            raise ValueError(
                f"data.sources.{key}: {', '.join(clash)} maps malignant onto benign or back (the run's malignant "
                f"classes: {list(self.malignant)}); fix data.sources.{key}.class_map or data.malignant"
            )
        return np.array([self.classes.index(r) for r in renamed])

    def _mapped_malignant(self) -> tuple[str, ...]:
        """The run's classes that the sources' malignant classes map to; an error when one of them also receives a
        benign class (it would mean both)."""
        seen: dict[str, list[tuple[str, str, bool]]] = {}
        for key, source in self.sources.items():
            for c in source.datamodule.classes:
                target = source.class_map.get(c, c)
                seen.setdefault(target, []).append((key, c, c in source.datamodule.malignant))
        mixed = {t: v for t, v in seen.items() if len({m for _, _, m in v}) > 1}
        if mixed:
            target, found = next(iter(mixed.items()))
            named = ", ".join(f"{k}'s {c} ({'malignant' if m else 'benign'})" for k, c, m in found)
            raise ValueError(
                f"{named} all map to {target}: a class cannot be malignant and benign at once. Fix the class_map of "
                "one of those sources (data.sources.<name>.class_map)"
            )
        return tuple(c for c in self.classes if any(m for _, _, m in seen.get(c, [])))
