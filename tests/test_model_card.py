"""The model card says of each model only what its checkpoint records: its training sources and their known
populations, its modality, its adaptation (a site model's card: tests/test_adaptation.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import compose_config

from lesion.models.module import LesionClassifier
from lesion.serving.model_card import model_card

CLASSES = {"class_names": ["benign", "malignant"], "malignant": ["malignant"]}


def card_of(overrides: list[str], tmp_path: Path) -> str:
    """The card of an untrained model built as train.py builds it from the composed config (what a checkpoint of that
    run records), written for a checkpoint file with no adaptation."""
    config = compose_config("train", [*overrides, "backbone.pretrained=false", "backbone.input_size=32"], tmp_path)
    model = LesionClassifier(backbone=config["backbone"], data=config["data"], **CLASSES)
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": {}}, ckpt)
    return model_card(model, ckpt, None)


def test_an_isic2018_models_card_names_dermoscopy_and_its_two_sites(tmp_path):
    card = card_of(["data=isic2018", "data.root=/data/isic2018"], tmp_path)
    assert "- Source `isic2018`: ISIC 2018 Task 3 training set (HAM10000); modality: dermoscopy" in card
    assert "Medical University of Vienna (Austria)" in card and "mostly light skin" in card
    assert "it saw dermoscopy images only; phone and clinical photos differ" in card
    assert "not recorded" not in card


def test_an_isic2024_models_card_says_3d_total_body_crops_and_nothing_of_ham10000(tmp_path):
    card = card_of(["data=isic2024", "data.root=/data/isic2024"], tmp_path)
    assert "- Source `isic2024`: ISIC 2024 Challenge (SLICE-3D); modality: 3D total-body photography crops" in card
    assert "Vectra WB360" in card and "it saw 3D total-body photography crops images only" in card
    assert "HAM10000" not in card and "Vienna" not in card and "dermoscopy" not in card


def test_a_multi_source_models_card_names_every_source_and_both_modalities(tmp_path):
    overrides = ["data=multi", "data.sources.isic2018.root=/d/isic", "data.sources.pad_ufes_20.root=/d/pad"]
    card = card_of(overrides, tmp_path)
    assert "- Source `isic2018`: ISIC 2018 Task 3 training set (HAM10000); modality: dermoscopy" in card
    assert "- Source `pad_ufes_20`: PAD-UFES-20; modality: clinical" in card
    assert "it saw clinical and dermoscopy images only" in card and "same collections" in card
    assert "Who the training data holds (`pad_ufes_20`): smartphone photos" in card
    # a source left out is not claimed
    alone = card_of([*overrides[:2], "data.sources.pad_ufes_20=null"], tmp_path / "alone")
    assert "PAD-UFES-20" not in alone and "clinical" not in alone.split("## Training data")[1].split("## Metrics")[0]


@pytest.mark.parametrize("data", ["folder", "csv"])
def test_a_model_of_undescribed_data_claims_no_population_and_says_how_to_describe_it(data, tmp_path):
    overrides = [f"data={data}", "data.root=/data/mine"] + (["data.csv=labels.csv"] if data == "csv" else [])
    card = card_of(overrides, tmp_path)
    assert f"Nothing is recorded of who is in `{data}` (data.provenance.population)" in card
    assert f"the modality of `{data}` is not recorded (data.provenance.modality)" in card
    assert "light skin" not in card and "HAM10000" not in card and "dermoscop" not in card
    described = card_of(
        [*overrides, "data.provenance.modality=clinical", "data.provenance.population=a clinic in Lagos"],
        tmp_path / "described",
    )
    assert f"Who the training data holds (`{data}`): a clinic in Lagos." in described
    assert "it saw clinical images only" in described


def test_the_sanity_sets_card_says_it_never_saw_skin(tmp_path):
    card = card_of(["data=apples_oranges"], tmp_path)
    assert "this model never saw skin" in card and "light skin" not in card
