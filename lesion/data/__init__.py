"""Datamodules, and the one door that builds one from the `data` config block."""

from __future__ import annotations

from lesion.data.apples_oranges import ApplesOrangesDataModule
from lesion.data.datamodule import LesionDataModule

DATAMODULES: dict[str, type[LesionDataModule]] = {
    "apples_oranges": ApplesOrangesDataModule,
}


def build_datamodule(data: dict, data_config: dict) -> LesionDataModule:
    """`data` is the config block (its `name` picks the class); `data_config` is the backbone's input spec."""
    data = dict(data)
    name = data.pop("name", None)
    if name not in DATAMODULES:
        raise ValueError(f"data.name={name!r} is not a known dataset; choose from {sorted(DATAMODULES)}")
    return DATAMODULES[name](data_config=data_config, **data)
