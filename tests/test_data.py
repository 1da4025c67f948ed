"""Apples/oranges rendering and the shared transform path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lesion.data.apples_oranges import ApplesOrangesDataModule, render_fruit
from lesion.data.transforms import LesionTransforms

DATA_CONFIG = {"input_size": [3, 48, 48], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic"}


def test_fruit_is_deterministic_per_seed_and_index():
    a, label_a = render_fruit(seed=3, index=7, size=40)
    b, label_b = render_fruit(seed=3, index=7, size=40)
    c, _ = render_fruit(seed=4, index=7, size=40)
    assert a.dtype == np.uint8 and a.shape == (40, 40, 3)
    assert np.array_equal(a, b) and label_a == label_b == 1
    assert not np.array_equal(a, c)


def test_oranges_are_more_orange_than_apples():
    hues = {0: [], 1: []}
    for i in range(40):
        image, label = render_fruit(seed=0, index=i, size=48)
        r, g, b = image[20:28, 20:28].reshape(-1, 3).mean(0)  # roughly the fruit's middle
        hues[label].append(g / max(r, 1))
    # Oranges have green/red ratios in a narrow band; apples are spread across red and green.
    assert np.std(hues[1]) < np.std(hues[0])


def test_splits_are_disjoint_balanced_and_sized_from_config():
    dm = ApplesOrangesDataModule(DATA_CONFIG, num_train=10, num_val=4, num_test=6, image_size=32)
    dm.setup()
    ids = {split: set(frame["image_id"]) for split, frame in dm.frames.items()}
    assert [len(ids[s]) for s in ("train", "val", "test")] == [10, 4, 6]
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    assert dm.class_counts("train") == [5, 5]
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (10, 3, 48, 48) and batch["label"].dtype == torch.int64


def test_transforms_resize_and_normalise_from_the_backbone_config():
    image = np.full((30, 40, 3), 255, np.uint8)
    out = LesionTransforms(DATA_CONFIG, hflip=False, vflip=False)(image, train=False)
    assert out.shape == (3, 48, 48) and torch.allclose(out, torch.ones_like(out))


def test_fixed_clahe_applies_to_every_split_and_random_clahe_only_to_training():
    rng = np.random.default_rng(0)
    image = (rng.random((48, 48, 3)) * 60 + 100).astype(np.uint8)  # low contrast
    plain = LesionTransforms(DATA_CONFIG, hflip=False, vflip=False)
    fixed = LesionTransforms(DATA_CONFIG, hflip=False, vflip=False, clahe=True, clahe_clip_limit=4.0)
    random_ = LesionTransforms(DATA_CONFIG, hflip=False, vflip=False, clahe=True, clahe_p=0.999)
    assert fixed(image, train=False).std() > plain(image, train=False).std() * 1.2
    assert torch.equal(random_(image, train=False), plain(image, train=False))
    assert fixed(image, train=True).std() > plain(image, train=True).std() * 1.2


@pytest.mark.parametrize("flag", ["hflip", "vflip"])
def test_flips_only_in_training(flag):
    image = np.zeros((48, 48, 3), np.uint8)
    image[:24, :24] = 255  # one bright quadrant: either flip moves it
    transforms = LesionTransforms(DATA_CONFIG, **{"hflip": False, "vflip": False, flag: True})
    evals = {transforms(image, train=False).sum().item() for _ in range(5)}
    trains = {tuple(transforms(image, train=True)[0, :, 0].tolist()) for _ in range(30)}
    assert len(evals) == 1 and len(trains) == 2


def test_downscaling_averages_areas_and_upscaling_keeps_the_backbone_interpolation():
    import cv2

    transforms = LesionTransforms(DATA_CONFIG | {"interpolation": "bicubic"}, hflip=False, vflip=False)
    rng = np.random.default_rng(0)
    photo = np.clip(128 + rng.normal(0, 20, (1200, 1600, 3)), 0, 255).astype(np.uint8)  # sensor noise, sigma 20
    shrunk = transforms.to_input_size(photo)
    cubic = cv2.resize(photo, (48, 48), interpolation=cv2.INTER_CUBIC)
    assert shrunk.shape == (48, 48, 3) and shrunk.std() < 2 < 10 < cubic.std()  # the noise is averaged away
    assert np.array_equal(shrunk, cv2.resize(photo, (48, 48), interpolation=cv2.INTER_AREA))
    small = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    assert np.array_equal(transforms.to_input_size(small), cv2.resize(small, (48, 48), interpolation=cv2.INTER_CUBIC))
    assert transforms.preprocess_settings()["downscale"] == "area"  # in the cache key


def test_a_degradation_means_the_same_on_a_small_image_and_on_a_big_photo():
    import cv2

    from lesion.data.degradations import DegradedReader, degrade

    transforms = LesionTransforms(DATA_CONFIG, hflip=False, vflip=False)
    yy, xx = np.mgrid[:48, :48]
    small = np.dstack([(xx * 5) % 255, (yy * 5) % 255, ((xx + yy) * 7) % 255]).astype(np.uint8)
    small[16:32, 16:32] = 30  # a sharp-edged spot
    big = cv2.resize(small, (480, 480), interpolation=cv2.INTER_NEAREST)  # the same scene as a 10x photo
    images = {"small": small, "big": big}
    for name in ("gaussian_blur", "motion_blur", "sensor_noise"):
        at_input = {k: DegradedReader(images.__getitem__, name, 2, transforms.to_input_size)(k) for k in images}
        assert np.abs(at_input["small"].astype(int) - at_input["big"]).mean() < 3, name
        raw_then_resized = transforms.to_input_size(degrade(big, name, 2))  # the old order: lost in the downscale
        clean = transforms.to_input_size(big)
        effect = np.abs(at_input["big"].astype(int) - clean).mean()
        assert np.abs(raw_then_resized.astype(int) - clean).mean() < effect / 2, name
