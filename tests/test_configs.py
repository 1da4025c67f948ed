"""Every config composes, alone and in every backbone x data pair, into values our classes accept."""

from __future__ import annotations

import inspect
import subprocess
import sys

import lightning as L
import pytest
from conftest import CONF, backbone_names, compose_config, data_names
from hydra.utils import instantiate
from omegaconf import OmegaConf

import lesion.runs.config  # noqa: F401  (registers run_id)
from lesion.data import DATAMODULES, SOURCE_KEYS, Source
from lesion.models.backbones import build_backbone
from lesion.models.module import LesionClassifier


def root_for(group: str, option: str) -> list[str]:
    """Real datasets need data.root (a mandatory ??? value); any path composes."""
    if (group, option) == ("data", "multi"):  # each source has its own root
        return ["data.sources.isic2018.root=/data/isic2018", "data.sources.pad_ufes_20.root=/data/pad"]
    text = (CONF / group / f"{option}.yaml").read_text()
    inherits = "defaults:" in text  # a data config built on another (pad_ufes_20 on csv) inherits its root: ???
    needs_root = (group == "data" and ("root:" in text or inherits)) or (
        group == "experiment" and "override /data" in text
    )
    extra = ["data.csv=labels.csv"] if (group, option) == ("data", "csv") else []  # csv: the file too
    return ["data.root=/data/somewhere", *extra] if needs_root else []


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["data", "backbone", "trainer", "logger", "callbacks", "experiment"])
def test_every_option_in_every_group_composes(group, tmp_path):
    for option in group_options(group):
        cfg = compose_config("train", [f"{group}={option}", *root_for(group, option)], tmp_path)
        assert cfg["paths"]["output_dir"] == str(tmp_path)


@pytest.mark.parametrize("backbone", backbone_names())
@pytest.mark.parametrize("data", data_names())
def test_backbone_data_pairs_compose_onto_typed_signatures(backbone, data, tmp_path):
    cfg = compose_config("train", [f"backbone={backbone}", f"data={data}", *root_for("data", data)], tmp_path)
    inspect.signature(build_backbone).bind(**cfg["backbone"], num_classes=2)
    data_cfg = dict(cfg["data"])
    inspect.signature(DATAMODULES[data_cfg.pop("name")]).bind(data_config={}, **data_cfg)
    for key, block in (data_cfg.get("sources") or {}).items():  # a multi-source run: each source's own block
        block = {k: v for k, v in block.items() if k not in SOURCE_KEYS}
        inspect.signature(DATAMODULES[block.pop("name")]).bind(data_config={}, **block)
        inspect.signature(Source).bind(datamodule=None, **{k: cfg["data"]["sources"][key].get(k) for k in SOURCE_KEYS})
    inspect.signature(LesionClassifier).bind(backbone=cfg["backbone"], **cfg["model"])
    inspect.signature(L.Trainer).bind(**cfg["trainer"])


def test_real_datasets_demand_a_root(tmp_path):
    with pytest.raises(Exception, match="data.root"):
        compose_config("train", ["data=isic2018"], tmp_path)


def test_eval_config_composes_with_and_without_data(tmp_path):
    assert compose_config("eval", ["ckpt_path=x.ckpt"], tmp_path).get("data") is None
    assert compose_config("eval", ["ckpt_path=x.ckpt", "data=apples_oranges"], tmp_path)["data"]["name"]


@pytest.mark.parametrize("name", ["resnet50_trunc", "resnet50", "resnet50_layer2", "resnet50_frozen_layer4", "vgg16"])
def test_the_studys_backbones_default_to_imagenet_weights(name, tmp_path):
    # The study fine-tuned ImageNet weights: its frozen stages must hold them, never a random initialisation.
    backbone = compose_config("train", [f"backbone={name}"], tmp_path)["backbone"]
    assert backbone["pretrained"] is True and backbone["allow_random_frozen"] is False


def test_study_final_is_the_studys_configuration(tmp_path):
    cfg = compose_config("train", ["experiment=study_final"], tmp_path)
    assert cfg["backbone"]["pretrained"] and cfg["backbone"]["freeze"] == ["conv1", "bn1", "layer1", "layer2"]
    assert cfg["backbone"]["model_name"] == "resnet50" and cfg["backbone"]["cut_after"] == "layer3"
    assert cfg["backbone"]["head"] == "vgg" and cfg["backbone"]["input_size"] == 224
    assert cfg["data"]["batch_size"] == 8 and cfg["data"]["eval_batch_size"] == 16
    assert cfg["optimizer"]["lr"] == 1e-5 and cfg["model"]["class_weights"] == [1, 10]
    assert cfg["callbacks"]["early_stopping"]["patience"] == 20 and cfg["trainer"]["max_epochs"] == 30
    transforms = cfg["data"]["transforms"]
    assert transforms["clahe"] and transforms["hflip"] and transforms["rotate"] > 0


def test_loggers_instantiate_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    for option in ("csv", "tensorboard"):
        cfg = compose_config("train", [f"logger={option}"], tmp_path)
        (block,) = cfg["logger"].values()
        assert instantiate(block).save_dir == str(tmp_path)


def test_run_ids_differ_between_processes_started_together():
    code = "import lesion.runs.config; from omegaconf import OmegaConf; print(OmegaConf.create({'d': '${run_id:}'}).d)"
    ids = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()}
    ids.add(OmegaConf.create({"d": "${run_id:}"}).d)
    assert len(ids) == 2 and all(ids)


def test_trainer_configs_carry_their_hardware_speed_options(tmp_path):
    cpu = compose_config("train", ["trainer=cpu"], tmp_path)
    gpu = compose_config("train", ["trainer=gpu"], tmp_path)
    assert cpu["trainer"]["precision"] == "32-true" and cpu["model"]["channels_last"] and not cpu["model"]["compile"]
    assert gpu["trainer"]["precision"] == "bf16-mixed" and gpu["model"]["channels_last"]
    # the trainer adds speed keys; it does not replace model.*
    assert gpu["model"]["class_weights"] == cpu["model"]["class_weights"]
    assert (
        compose_config("train", ["trainer=gpu", "model.channels_last=false"], tmp_path)["model"]["channels_last"]
        is False
    )


def test_compile_keeps_parameter_names(tmp_path):
    cfg = compose_config("train", ["backbone=resnet50_trunc", "backbone.input_size=64"], tmp_path)
    plain = LesionClassifier(backbone=cfg["backbone"] | {"pretrained": False, "allow_random_frozen": True})
    compiled = LesionClassifier(
        backbone=cfg["backbone"] | {"pretrained": False, "allow_random_frozen": True}, compile=True
    )
    assert list(plain.state_dict()) == list(compiled.state_dict())


def test_study_comparison_sweeps_every_study_row_on_one_protocol(tmp_path):
    cfg = compose_config("train", ["experiment=study_comparison"], tmp_path)
    rows = [
        r.strip()
        for r in OmegaConf.load(CONF / "experiment" / "study_comparison.yaml").hydra.sweeper.params.study_row.split(",")
    ]
    # Offline (study_init=scratch): from-scratch rows train every stage, so frozen_layer4 would repeat resnet50.
    assert sorted(rows) == [r for r in group_options("study_row") if r != "resnet50_frozen_layer4"] and len(rows) == 8
    seen = set()
    for row in rows:
        job = compose_config("train", ["experiment=study_comparison", f"study_row={row}"], tmp_path)
        backbone = job["backbone"]
        seen.add((backbone["model_name"], backbone["cut_after"], backbone["laurel"]))
        for key in ("data", "model", "trainer", "seed", "operating_point"):  # identical protocol
            assert job[key] == cfg[key], (row, key)
        assert backbone["input_size"] == 112
        # ImageNet only where it is offline (Lite0's package); never a frozen random stage
        assert backbone["pretrained"] == (row == "efficientnet_lite0") and backbone["freeze"] == [], row
    assert len(seen) == 8
    # With hub access, the study's own setting: ImageNet weights and each row's own frozen stages.
    hub = compose_config("train", ["experiment=study_comparison", "study_init=imagenet"], tmp_path)["backbone"]
    assert hub["pretrained"] and hub["freeze"] == ["conv1", "bn1", "layer1", "layer2"]
    assert cfg["data"]["name"] == "isic2018" and cfg["data"]["task"] == "binary" and cfg["monitor"] == "val/auroc"


@pytest.mark.parametrize("strategy", group_options("strategy"))
def test_adapt_composes_with_every_strategy_onto_its_dataclass(strategy, tmp_path):
    from lesion.models.adaptation import Strategy, trained_parameters
    from lesion.models.backbones import build_backbone

    cfg = compose_config(
        "adapt", ["ckpt_path=x.ckpt", "data=pad_ufes_20", "data.root=/x", f"strategy={strategy}"], tmp_path
    )
    chosen = Strategy(**cfg["strategy"])
    assert chosen.name == strategy and cfg["quality"]["region"] == 0.5
    # the parameter names it trains exist in the recipe's network (EfficientNet-Lite0)
    net = build_backbone(**compose_config("train", ["backbone.pretrained=false"], tmp_path)["backbone"], num_classes=7)
    assert bool(trained_parameters(net, chosen.train)) == bool(chosen.train)


def test_the_recipe_certifies_on_a_calibration_split_it_carves_alone_and_with_phone_photos(tmp_path):
    from fakes import make_isic2018, make_pad

    from lesion.data import build_datamodule

    isic, pad = make_isic2018(tmp_path / "isic", n=140), make_pad(tmp_path / "pad", patients=40)
    data_config = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear"}
    multi = ["data=multi", f"data.sources.isic2018.root={isic}", f"data.sources.pad_ufes_20.root={pad}"]
    for overrides in ([f"data.root={isic}"], multi):
        config = compose_config("train", ["experiment=isic2018_cpu_best", *overrides], tmp_path / "run")
        assert config["data"]["calibration_fraction"] == 0.1
        datamodule = build_datamodule({**config["data"], "num_workers": 0, "cache": False}, data_config)
        assert datamodule.calibration_split == "calibration" and len(datamodule.frames["calibration"])
