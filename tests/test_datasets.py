"""Real-data datamodules on tiny fixtures in the official formats: splits, bad input, imbalance, cache."""

from __future__ import annotations

import logging
import subprocess
import sys

import cv2
import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT
from fakes import jpeg, make_folder, make_ham10000, make_isic2018, make_isic2024

from lesion.data import build_datamodule
from lesion.data.datamodule import LesionDataset
from lesion.data.isic2024 import TRAIN_ONLY
from lesion.data.readers import BadImageError, BadImagesError
from lesion.data.splits import assign_splits, crossing_groups

DATA_CONFIG = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear"}


def datamodule(name: str, root, **kwargs):
    return build_datamodule({"name": name, "root": str(root), "batch_size": 8, **kwargs}, DATA_CONFIG)


def test_isic2018_binary_labels_and_lesion_disjoint_split(tmp_path):
    dm = datamodule("isic2018", make_isic2018(tmp_path))
    dm.setup()
    assert dm.classes == ("benign", "malignant")
    frame = pd.concat(dm.frames.values())
    assert set(frame.loc[frame["label"] == 1, "diagnosis"]) == {"MEL", "BCC", "AKIEC"}
    assert all(len(f) for f in dm.frames.values()) and len(frame) == 84
    assert crossing_groups(dm.frames, "lesion_id") == set()
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 3, 32, 32)


def test_isic2018_diagnosis_task_has_seven_classes(tmp_path):
    dm = datamodule("isic2018", make_isic2018(tmp_path, n=140), task="diagnosis", val_fraction=0.2, test_fraction=0.2)
    assert dm.class_counts("train") and len(dm.classes) == 7 and dm.malignant == ("MEL", "BCC", "AKIEC")


def test_isic2018_uses_official_validation_and_test_sets(tmp_path):
    dm = datamodule("isic2018", make_isic2018(tmp_path, official=("Validation", "Test")))
    dm.setup()
    assert dm.frames["val"]["image_id"].str.startswith("ISIC_01").all()
    assert dm.frames["test"]["image_id"].str.startswith("ISIC_02").all()
    assert len(dm.frames["train"]) == 84


def test_split_file_reproduces_the_split_and_rejects_unknown_ids(tmp_path):
    root = make_isic2018(tmp_path / "data")
    first = datamodule("isic2018", root, seed=1)
    path = first.save_splits(tmp_path / "splits.csv")
    again = datamodule("isic2018", root, seed=99, split_file=str(path))
    again.setup()
    for split in ("train", "val", "test"):
        assert set(again.frames[split]["image_id"]) == set(first.frames[split]["image_id"])
    table = pd.read_csv(path)
    table.iloc[:-1].to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(ValueError, match="no split for 1 images"):
        datamodule("isic2018", root, split_file=str(tmp_path / "short.csv")).setup()


def test_a_calibration_split_is_carved_like_val_and_kept_by_the_split_file(tmp_path):
    root = make_isic2018(tmp_path / "data", n=140)
    dm = datamodule("isic2018", root, calibration_fraction=0.2)
    dm.setup()
    assert list(dm.frames) == ["train", "val", "test", "calibration"] and dm.calibration_split == "calibration"
    assert len(dm.frames["calibration"]) == pytest.approx(0.2 * 140, abs=4)  # to within a group per class
    assert crossing_groups(dm.frames, "lesion_id") == set()  # no lesion in two splits
    assert set(dm.frames["calibration"]["label"]) == {0, 1}
    assert len(next(iter(dm.calibration_dataloader()))["image"]) == len(dm.frames["calibration"])
    path = dm.save_splits(tmp_path / "splits.csv")
    again = datamodule("isic2018", root, seed=5, split_file=str(path))
    again.setup()
    assert set(again.frames["calibration"]["image_id"]) == set(dm.frames["calibration"]["image_id"])
    without = datamodule("isic2018", root)
    without.setup()
    assert without.calibration_split == "val" and "calibration" not in without.frames
    plain = without.save_splits(tmp_path / "plain.csv")
    with pytest.raises(ValueError, match="has no 'calibration' rows to go with data.calibration_fraction=0.2"):
        datamodule("isic2018", root, split_file=str(plain), calibration_fraction=0.2).setup()
    with pytest.raises(ValueError, match="data.calibration_fraction=0.9 must be above 0 and below"):
        datamodule("isic2018", root, calibration_fraction=0.9).setup()


def test_ground_truth_missing_a_column_names_column_and_file(tmp_path):
    root = make_isic2018(tmp_path)
    truth = root / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_GroundTruth.csv"
    pd.read_csv(truth).drop(columns="VASC").to_csv(truth, index=False)
    with pytest.raises(ValueError, match=r"ISIC2018_Task3_Training_GroundTruth\.csv.*'VASC'"):
        datamodule("isic2018", root).setup()


def test_ground_truth_row_that_is_not_one_hot_is_named(tmp_path):
    root = make_isic2018(tmp_path)
    truth = root / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_GroundTruth.csv"
    table = pd.read_csv(truth)
    table.loc[3, "NV"] = 1.0
    table.to_csv(truth, index=False)
    with pytest.raises(ValueError, match=r"row 5 \(ISIC_0000003\)"):
        datamodule("isic2018", root).setup()


def test_bad_images_are_listed_in_one_error_or_skipped_explicitly(tmp_path, caplog):
    root = make_isic2018(tmp_path)
    images = root / "ISIC2018_Task3_Training_Input"
    (images / "ISIC_0000001.jpg").unlink()
    (images / "ISIC_0000002.jpg").write_bytes(b"")
    (images / "ISIC_0000003.jpg").write_bytes(jpeg(3)[:-200])
    (images / "ISIC_0000004.jpg").write_text("not an image")
    with pytest.raises(BadImagesError) as err:
        datamodule("isic2018", root).setup()
    message = str(err.value)
    assert "4 bad images" in message and "ISIC2018_Task3_Training_Input" in message
    for image_id in ("ISIC_0000001", "ISIC_0000002", "ISIC_0000003", "ISIC_0000004"):
        assert image_id in message
    assert "data.on_bad_image=skip" in message
    with caplog.at_level(logging.WARNING):
        dm = datamodule("isic2018", root, on_bad_image="skip")
        dm.setup()
    assert sum(len(f) for f in dm.frames.values()) == 80
    assert "ISIC_0000003" in caplog.text and "skipped 4 images" in caplog.text


def test_undecodable_image_with_valid_markers_is_found_by_verify_images(tmp_path):
    root = make_isic2018(tmp_path)
    (root / "ISIC2018_Task3_Training_Input" / "ISIC_0000005.jpg").write_bytes(b"\xff\xd8" + b"\x00" * 50 + b"\xff\xd9")
    datamodule("isic2018", root).setup()  # the cheap check passes it
    with pytest.raises(BadImagesError, match="ISIC_0000005 \\(undecodable\\)"):
        datamodule("isic2018", root, verify_images=True).setup()


def test_empty_class_in_a_split_is_an_error(tmp_path):
    root = make_isic2018(tmp_path / "data")
    dm = datamodule("isic2018", root)
    table = pd.read_csv(dm.save_splits(tmp_path / "splits.csv"))
    frame = pd.concat(dm.frames.values())
    benign = set(frame.loc[frame["label"] == 0, "image_id"])
    table.loc[(table["split"] == "val") & ~table["image_id"].isin(benign), "split"] = "train"
    table.to_csv(tmp_path / "no_malignant_val.csv", index=False)
    with pytest.raises(ValueError, match=r"the val split has no images of class \['malignant'\]"):
        datamodule("isic2018", root, split_file=str(tmp_path / "no_malignant_val.csv")).setup()


@pytest.mark.parametrize("val_fraction, test_fraction", [(0.15, 0.15), (0.4, 0.2), (0.1, 0.3)])
def test_split_fractions_are_realised_to_within_one_group(val_fraction, test_fraction):
    # One fold of round(1/f) folds gave 14.3 % for 0.15 and 50 % for 0.4.
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 4, 1500)  # lesions of 1-3 images
    groups = np.repeat(np.arange(len(sizes)), sizes)
    labels = np.repeat(rng.choice(5, len(sizes), p=[0.6, 0.2, 0.1, 0.07, 0.03]), sizes)
    frame = pd.DataFrame({"image_id": [f"i{i}" for i in range(len(groups))], "label": labels, "lesion": groups})
    split = assign_splits(frame, ("val", "test"), "lesion", val_fraction, test_fraction, seed=3)
    assert split.groupby(frame["lesion"]).nunique().max() == 1  # no lesion in two splits
    for name, fraction in (("val", val_fraction), ("test", test_fraction)):
        for label in range(5):  # every class at the asked share, to within one lesion
            of_label = labels == label
            held = (split[of_label] == name).sum()
            # test is carved from all images, val from what test left: both are fractions of the whole
            assert abs(held - fraction * of_label.sum()) <= 3 + fraction * 3, (name, label, held)
        assert abs((split == name).sum() - fraction * len(frame)) <= 5 * 3, name


def test_too_few_images_to_stratify_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="too few images"):
        datamodule("isic2018", make_isic2018(tmp_path, n=14), task="diagnosis").setup()


def test_ham10000_reads_both_image_parts_and_keeps_metadata(tmp_path):
    dm = datamodule("ham10000", make_ham10000(tmp_path))
    dm.setup()
    frame = pd.concat(dm.frames.values())
    assert len(frame) == 84 and {"age", "sex", "localization", "dx_type"} <= set(frame.columns)
    assert crossing_groups(dm.frames, "lesion_id") == set()
    assert next(iter(dm.val_dataloader()))["image"].shape[1:] == (3, 32, 32)


@pytest.mark.parametrize("hdf5", [True, False])
def test_isic2024_streams_images_and_hides_train_only_columns(tmp_path, hdf5):
    dm = datamodule("isic2024", make_isic2024(tmp_path, hdf5=hdf5), num_workers=2, neg_ratio=None)
    dm.setup()
    for frame in dm.frames.values():
        assert not set(TRAIN_ONLY) & set(frame.columns)
    assert crossing_groups(dm.frames, "patient_id") == set()
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "label", "image_id"} and batch["image"].shape == (8, 3, 32, 32)


def test_isic2024_folds_are_patient_grouped_and_differ_by_fold(tmp_path):
    root = make_isic2024(tmp_path)
    vals = []
    for fold in range(3):
        dm = datamodule("isic2024", root, fold=fold, num_folds=3)
        dm.setup()
        assert crossing_groups(dm.frames, "patient_id") == set()
        vals.append(set(dm.frames["val"]["patient_id"]))
        test = set(dm.frames["test"]["patient_id"])
    assert vals[0].isdisjoint(vals[1]) and vals[1].isdisjoint(vals[2])
    assert all(v.isdisjoint(test) for v in vals)


def test_isic2024_undersamples_negatives_afresh_every_epoch(tmp_path):
    dm = datamodule("isic2024", make_isic2024(tmp_path), neg_ratio=3)
    loader = dm.train_dataloader()
    labels = dm.dataset("train").labels
    positives = int(labels.sum())
    epochs = []
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        drawn = [index for index, *_ in loader.sampler]
        assert len(drawn) == 4 * positives and int(labels[drawn].sum()) == positives
        epochs.append(set(drawn))
    assert epochs[0] != epochs[1]
    assert len(dm.dataset("val")) == len(dm.frames["val"])


def test_bad_hdf5_entries_are_found_at_set_up_without_decoding(tmp_path):
    root = make_isic2024(tmp_path)
    with h5py.File(root / "train-image.hdf5", "a") as f:
        for image_id, data in (
            ("ISIC_9000001", np.void(jpeg(1)[:-100])),  # truncated: no end-of-image marker
            ("ISIC_9000002", h5py.Empty("V1")),  # empty
            ("ISIC_9000003", np.void(b"GIF89a" + bytes(40))),  # not a JPEG
            ("ISIC_9000004", np.bytes_(jpeg(4))),  # fine, stored as a fixed-length string
        ):
            del f[image_id]
            f.create_dataset(image_id, data=data)
    with pytest.raises(BadImagesError) as raised:
        datamodule("isic2024", root).setup()
    message = str(raised.value)
    assert "3 bad images" in message and "ISIC_9000004" not in message
    for reason in ("ISIC_9000001 (truncated JPEG", "ISIC_9000002 (empty)", "ISIC_9000003 (not a JPEG"):
        assert reason in message, reason
    dm = datamodule("isic2024", root, on_bad_image="skip")
    dm.setup()
    assert sum(len(f) for f in dm.frames.values()) == 240 - 3


def test_an_hdf5_entry_that_passes_the_cheap_checks_but_does_not_decode(tmp_path):
    # Its first and last bytes are a JPEG's, its middle is gone: found when loaded, or by data.verify_images=true.
    root = make_isic2024(tmp_path)
    with h5py.File(root / "train-image.hdf5", "a") as f:
        del f["ISIC_9000001"]
        f.create_dataset("ISIC_9000001", data=np.void(jpeg(1)[:200] + jpeg(1)[-2:]))
    dm = datamodule("isic2024", root)
    dm.setup()
    split = next(s for s, f in dm.frames.items() if "ISIC_9000001" in set(f["image_id"]))
    dataset = dm.dataset(split)
    index = list(dataset.image_ids).index("ISIC_9000001")
    with pytest.raises(BadImageError, match=r"ISIC_9000001 in .*train-image\.hdf5"):
        dataset[index]
    with pytest.raises(BadImagesError, match=r"1 bad images .*ISIC_9000001"):
        datamodule("isic2024", root, verify_images=True).setup()


def test_folder_layout_says_what_it_ignores_with_counts(tmp_path, caplog):
    root = make_folder(tmp_path / "data", per_class=6, splits=("train", "test"))
    make_folder(root / "extra", per_class=2)  # class folders beside the split folders: 4 files
    (root / "train" / "benign" / "more").mkdir()  # not searched recursively: 3 files
    for i in range(3):
        (root / "train" / "benign" / "more" / f"m{i}.jpg").write_bytes(jpeg(i))
    for name in ("a.gif", "b.gif", "c.tiff"):  # extensions the reader does not take
        (root / "train" / "malignant" / name).write_bytes(b"RIFF")
    (root / "train" / "notes.txt").write_text("outside the class folders")
    with caplog.at_level(logging.WARNING, logger="lesion.data.folder"):
        dm = datamodule("folder", root)
        dm.setup()
    assert sum(len(f) for f in dm.frames.values()) == 24  # only train/ and test/ class folders, top level
    text = caplog.text
    assert "folders beside the split folders ['test', 'train'] are ignored (files: {'extra': 4})" in text
    assert "3 files with extensions other than" in text and "'.gif': 2" in text and "'.tiff': 1" in text
    assert "3 files in 1 subfolders are ignored" in text and "1 files outside class folders" in text


@pytest.mark.parametrize("task", ["binary", "diagnosis"])
def test_folder_classes_and_malignant_names(tmp_path, task):
    root = make_folder(tmp_path, classes=("melanoma", "nevus", "seborrheic keratosis"), splits=("Train", "Test"))
    dm = datamodule("folder", root, malignant=["melanoma"], task=task)
    dm.setup()
    assert len(dm.frames["test"]) == 60 and len(dm.frames["val"]) > 0  # val carved from Train
    if task == "binary":
        assert dm.classes == ("benign", "malignant") and dm.class_counts("test") == [40, 20]
    else:
        assert dm.classes == ("melanoma", "nevus", "seborrheic keratosis") and dm.malignant == ("melanoma",)
    with pytest.raises(ValueError, match="basal"):
        datamodule("folder", root, malignant=["basal"])


def test_balanced_sampler_draws_classes_equally(tmp_path):
    root = make_folder(tmp_path, per_class=10)
    for i in range(30):
        (root / "benign" / f"extra_{i}.jpg").write_bytes(jpeg(5000 + i))
    dm = datamodule("folder", root, sampler="balanced", test_fraction=0.2, val_fraction=0.2)
    labels = dm.dataset("train").labels
    sampler = dm.train_dataloader().sampler
    drawn = torch.tensor([labels[i] for _ in range(20) for i, *_ in sampler])
    assert abs(drawn.float().mean().item() - 0.5) < 0.05
    assert labels.mean() < 0.3


def test_cache_serves_preprocessed_images_and_is_keyed_by_settings(tmp_path):
    root = make_folder(tmp_path / "data", per_class=6)
    kwargs = {"cache": True, "cache_dir": str(tmp_path / "cache"), "val_fraction": 0.3, "test_fraction": 0.3}
    dm = datamodule("folder", root, **kwargs)
    dataset = dm.dataset("val")
    first = [dataset[i]["image"] for i in range(len(dataset))]
    assert dm._cache.filled() == len(dataset)
    dataset.read = None  # a second pass must not decode at all
    assert all(torch.equal(a, dataset[i]["image"]) for i, a in enumerate(first))
    clahe = datamodule("folder", root, transforms={"clahe": True}, **kwargs)
    clahe.setup()
    assert clahe._cache.dir != dm._cache.dir and clahe._cache.filled() == 0


def test_epoch_order_and_augmentation_depend_only_on_seed_and_epoch(tmp_path):
    dm = datamodule("folder", make_folder(tmp_path, per_class=8), val_fraction=0.25, test_fraction=0.25)
    first, again = dm.train_dataloader().sampler, dm.train_dataloader().sampler
    epoch0, epoch1 = list(first), list(first)  # one pass counts one epoch on
    again.set_epoch(1)
    assert list(again) == epoch1 and epoch0 != epoch1
    dataset = dm.dataset("train", train=True)
    assert torch.equal(dataset[epoch1[0]]["image"], dataset[epoch1[0]]["image"])


def test_train_sizes_schedule_the_training_resolution_by_epoch(tmp_path):
    root = make_folder(tmp_path, per_class=8)
    dm = datamodule(
        "folder",
        root,
        val_fraction=0.25,
        test_fraction=0.25,
        train_sizes=[[16, 24]],
        num_workers=1,
        cache=True,
        cache_dir=str(tmp_path / "cache"),
    )
    loader = dm.train_dataloader()
    sizes = []
    for epoch in range(3):  # as Lightning runs it: one loader, persistent workers, set_epoch before each epoch
        loader.sampler.set_epoch(epoch)
        sizes.append({tuple(batch["image"].shape[-2:]) for batch in loader})
    assert sizes == [{(16, 24)}, {(32, 32)}, {(32, 32)}]
    assert {tuple(batch["image"].shape[-2:]) for batch in dm.val_dataloader()} == {(32, 32)}
    # the schedule's resize is the input pipeline's own: the cached input-size image, area-averaged down
    dataset = dm.dataset("train", train=True)
    image = dm.transforms.preprocess(image=dataset.read(dataset.image_ids[0]))["image"]
    small = cv2.resize(image, (24, 16), interpolation=cv2.INTER_AREA)
    unaugmented = LesionDataset(dataset.image_ids, dataset.labels, dataset.read, dm.transforms, False, sizes=[[16, 24]])
    assert torch.equal(unaugmented[(0, 0, 0)]["image"], dm.transforms.finish(small, train=False))
    with pytest.raises(ValueError, match=r"data.train_sizes\[1\] is \[150\]"):
        datamodule("folder", root, train_sizes=[[150, 200], [150]])


def _encoded(image, kind: str, **save) -> bytes:
    import io

    from PIL import Image
    from pillow_heif import register_heif_opener

    register_heif_opener()
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, format=kind, **save)
    return buffer.getvalue()


def test_the_first_heic_a_process_reads_is_held_to_max_pixels(tmp_path):
    # The HEIF opener is registered when the reader is imported: a process whose first image is a HEIC must not read
    # its declared size as 0x0 and pass the limit.
    photo = tmp_path / "big.heic"
    photo.write_bytes(_encoded(np.zeros((64, 80, 3), np.uint8), "HEIF"))
    code = (
        "import sys\n"
        "from lesion.data.readers import BadImageError, decode\n"
        "try:\n"
        f"    decode(open({str(photo)!r}, 'rb').read(), 'big.heic', 'upload', max_pixels=1000)\n"
        "except BadImageError as err:\n"
        "    print(err)\n"
        "    sys.exit(0)\n"
        "sys.exit('decoded: the limit was not applied')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "80x64 = 5,120 pixels is over the limit of 1,000" in done.stdout


def test_reader_takes_what_phones_write_and_still_refuses_a_cut_file():
    from PIL import Image

    from lesion.data.readers import decode

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:30, :40]
    rgb = np.dstack([xx * 6, yy * 8, 255 - xx * 6]).astype(np.uint8)  # smooth: lossy codecs keep it
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    for kind in ("JPEG", "WEBP", "HEIF"):
        upright = decode(_encoded(rgb, kind, quality=95), "x", "test")
        assert upright.shape == (30, 40, 3) and upright.dtype == np.uint8, kind
        assert np.abs(upright.astype(int) - rgb).mean() < 8, kind  # the same picture (lossy codecs)
        rotated = decode(_encoded(rgb, kind, quality=95, exif=exif.tobytes()), "x", "test")
        assert rotated.shape == (40, 30, 3), kind  # EXIF orientation applied
    grey16 = decode(cv2.imencode(".png", (rng.integers(0, 65535, (20, 24))).astype(np.uint16))[1].tobytes(), "x", "t")
    rgba = decode(_encoded(np.dstack([rgb, np.full((30, 40), 128, np.uint8)]), "PNG"), "x", "t")
    cmyk = decode(_encoded(Image.fromarray(rgb).convert("CMYK"), "JPEG"), "x", "t")
    grey = decode(_encoded(rgb[..., 0], "WEBP"), "x", "t")
    for image, shape in ((grey16, (20, 24, 3)), (rgba, (30, 40, 3)), (cmyk, (30, 40, 3)), (grey, (30, 40, 3))):
        assert image.shape == shape and image.dtype == np.uint8
    whole = jpeg(3, size=64)
    padded = decode(whole + bytes(range(256)) * 8, "x", "t")  # 2 kB after the end-of-image marker
    assert np.array_equal(padded, decode(whole, "x", "t"))
    with pytest.raises(BadImageError, match="truncated JPEG"):
        decode(whole[: len(whole) // 2], "x", "t")  # cut in half
    with_exif = _encoded(rgb, "JPEG", exif=exif.tobytes())  # an APP1 segment before the image data
    with pytest.raises(BadImageError, match="truncated JPEG"):
        decode(with_exif[: len(with_exif) - 50], "x", "t")


def test_folder_datamodule_reads_webp_and_heic_and_padded_jpegs(tmp_path):
    root = make_folder(tmp_path / "data", per_class=6)
    rng = np.random.default_rng(1)
    for c in ("benign", "malignant"):
        (root / c / "p.webp").write_bytes(_encoded(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8), "WEBP"))
        (root / c / "p.heic").write_bytes(_encoded(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8), "HEIF"))
        (root / c / "motion.jpg").write_bytes(jpeg(9) + b"\x00\x00\x00\x18ftypmp42" + bytes(3000))
    dm = datamodule("folder", root, val_fraction=0.25, test_fraction=0.25)
    dm.setup()
    assert sum(len(f) for f in dm.frames.values()) == 18
    for split in ("train", "val", "test"):
        dataset = dm.dataset(split)
        assert all(dataset[i]["image"].shape == (3, 32, 32) for i in range(len(dataset)))


def make_csv_set(root, patients: int = 12) -> pd.DataFrame:
    """images/<id>.jpg and labels.csv: image, diagnosis (MEL, NEV, BCC), patient, fitzpatrick, split left empty."""
    (root / "images").mkdir(parents=True)
    rows = []
    for p in range(patients):
        for j in range(4):
            k = 4 * p + j
            (root / "images" / f"img{k}.jpg").write_bytes(jpeg(k))
            rows.append({"image": f"images/img{k}.jpg", "diagnosis": ["MEL", "NEV", "BCC", "NEV"][j],
                         "patient": f"P{p}", "fitzpatrick": 1 + p % 6})  # fmt: skip
    table = pd.DataFrame(rows)
    table.to_csv(root / "labels.csv", index=False)
    return table


def test_csv_datamodule_reads_paths_labels_groups_and_metadata(tmp_path):
    table = make_csv_set(tmp_path / "data")
    kwargs = {"csv": "labels.csv", "label_column": "diagnosis", "malignant": ["MEL", "BCC"], "group_column": "patient"}
    dm = datamodule("csv", tmp_path / "data", **kwargs, val_fraction=0.25, test_fraction=0.25)
    dm.setup()
    frame = pd.concat(dm.frames.values())
    assert len(frame) == 48 and dm.classes == ("benign", "malignant") and "fitzpatrick" in frame
    assert (frame["label"] == frame["diagnosis"].isin(["MEL", "BCC"])).all()
    assert crossing_groups(dm.frames, "patient") == set()  # no patient on two sides
    assert dm.dataset("train")[0]["image"].shape == (3, 32, 32)
    seven = datamodule("csv", tmp_path / "data", **kwargs, task="diagnosis", external=True)
    seven.setup()
    assert seven.classes == ("BCC", "MEL", "NEV") and len(seven.frames["test"]) == 48  # external: every image tested
    table["split"] = ["train"] * 24 + ["val"] * 12 + ["test"] * 12  # by patient: 6, 3 and 3 patients
    table.to_csv(tmp_path / "data" / "split.csv", index=False)
    given = datamodule("csv", tmp_path / "data", **kwargs | {"csv": "split.csv"}, split_column="split")
    given.setup()
    assert [len(given.frames[s]) for s in ("train", "val", "test")] == [24, 12, 12]


def test_csv_datamodule_errors_name_the_file_and_the_fix(tmp_path):
    make_csv_set(tmp_path / "data")
    with pytest.raises(ValueError, match=r"labels\.csv lacks the required column\(s\) \['label'\]"):
        datamodule("csv", tmp_path / "data", csv="labels.csv")
    with pytest.raises(ValueError, match=r"data.malignant names \['melanoma'\], which no row of .*labels\.csv has"):
        datamodule("csv", tmp_path / "data", csv="labels.csv", label_column="diagnosis", malignant=["melanoma"])
    (tmp_path / "data" / "images" / "img3.jpg").unlink()
    with pytest.raises(BadImagesError, match="img3"):
        datamodule("csv", tmp_path / "data", csv="labels.csv", label_column="diagnosis", malignant=["MEL"]).setup()
