"""Datamodules, and the one door that builds one from the `data` config block."""

from __future__ import annotations

from lesion.data.apples_oranges import ApplesOrangesDataModule
from lesion.data.csv import CsvDataModule
from lesion.data.datamodule import LesionDataModule
from lesion.data.folder import FolderDataModule
from lesion.data.ham10000 import Ham10000DataModule
from lesion.data.isic2018 import Isic2018DataModule
from lesion.data.isic2024 import Isic2024DataModule
from lesion.data.multi import SOURCE_KEYS, MultiDataModule, Source
from lesion.data.synthetic import SyntheticDataModule

DATAMODULES: dict[str, type[LesionDataModule]] = {
    "apples_oranges": ApplesOrangesDataModule,
    "isic2018": Isic2018DataModule,
    "ham10000": Ham10000DataModule,
    "isic2024": Isic2024DataModule,
    "folder": FolderDataModule,
    "csv": CsvDataModule,
    "synthetic": SyntheticDataModule,
    "multi": MultiDataModule,
}


def build_datamodule(data: dict, data_config: dict) -> LesionDataModule:
    """`data` is the config block (its `name` picks the class); `data_config` is the backbone's input spec.
    `name: multi` builds each block of `data.sources` through this same door first."""
    data = dict(data)
    name = data.pop("name", None)
    if name not in DATAMODULES:
        raise ValueError(f"data.name={name!r} is not a known dataset; choose from {sorted(DATAMODULES)}")
    if name == "multi":
        # A source set to null (data.sources.pad_ufes_20=null) is left out.
        sources = {key: block for key, block in (data.get("sources") or {}).items() if block is not None}
        data["sources"] = {key: _source(key, block, data_config) for key, block in sources.items()}
    return DATAMODULES[name](data_config=data_config, **data)


def _source(key: str, block: dict | None, data_config: dict) -> Source:
    block = dict(block or {})
    if block.get("name") in (None, "multi"):
        raise ValueError(f"data.sources.{key} needs the name of a single-source data config (e.g. csv, isic2018)")
    own = {k: block.pop(k) for k in SOURCE_KEYS if k in block}
    # The run's own transforms, loaders and sampling apply to every source; a source block keeps its layout and split.
    for shared in ("transforms", "batch_size", "eval_batch_size", "num_workers", "persistent_workers", "cache"):
        block.pop(shared, None)
    return Source(build_datamodule(block, data_config), **own)
