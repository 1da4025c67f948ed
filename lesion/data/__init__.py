"""Datamodules, and the one door that builds one from the `data` config block."""

from __future__ import annotations

from lesion.data.apples_oranges import ApplesOrangesDataModule
from lesion.data.csv import CsvDataModule
from lesion.data.datamodule import LesionDataModule
from lesion.data.folder import FolderDataModule
from lesion.data.ham10000 import Ham10000DataModule
from lesion.data.isic2018 import Isic2018DataModule
from lesion.data.isic2024 import Isic2024DataModule
from lesion.data.synthetic import SyntheticDataModule

DATAMODULES: dict[str, type[LesionDataModule]] = {
    "apples_oranges": ApplesOrangesDataModule,
    "isic2018": Isic2018DataModule,
    "ham10000": Ham10000DataModule,
    "isic2024": Isic2024DataModule,
    "folder": FolderDataModule,
    "csv": CsvDataModule,
    "synthetic": SyntheticDataModule,
}


def build_datamodule(data: dict, data_config: dict) -> LesionDataModule:
    """`data` is the config block (its `name` picks the class); `data_config` is the backbone's input spec."""
    data = dict(data)
    name = data.pop("name", None)
    if name not in DATAMODULES:
        raise ValueError(f"data.name={name!r} is not a known dataset; choose from {sorted(DATAMODULES)}")
    return DATAMODULES[name](data_config=data_config, **data)
