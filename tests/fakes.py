"""Tiny datasets in each official on-disk format, built in tmp_path."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from lesion.data.isic2018 import DIAGNOSES


def jpeg(seed: int, size: int = 24) -> bytes:
    rng = np.random.default_rng(seed)
    image = np.full((size, size, 3), rng.integers(40, 220, 3), np.uint8)
    image[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = rng.integers(0, 255, 3)
    return cv2.imencode(".jpg", image)[1].tobytes()


def diagnoses(n: int) -> list[str]:
    """Every diagnosis several times, malignant ones included."""
    return [DIAGNOSES[i % len(DIAGNOSES)] for i in range(n)]


def make_isic2018(root: Path, n: int = 84, official: tuple[str, ...] = ()) -> Path:
    """The official ISIC 2018 Task 3 layout; two images per lesion; optional official Validation/Test sets."""
    for split, count in [("Training", n)] + [(s, 14) for s in official]:
        images = root / f"ISIC2018_Task3_{split}_Input"
        truth = root / f"ISIC2018_Task3_{split}_GroundTruth"
        images.mkdir(parents=True)
        truth.mkdir(parents=True)
        offset = {"Training": 0, "Validation": 100000, "Test": 200000}[split]
        ids = [f"ISIC_{offset + i:07d}" for i in range(count)]
        for i, image_id in enumerate(ids):
            (images / f"{image_id}.jpg").write_bytes(jpeg(offset + i))
        onehot = pd.DataFrame(0.0, index=range(count), columns=list(DIAGNOSES))
        for i, dx in enumerate(diagnoses(count)):
            onehot.loc[i, dx] = 1.0
        onehot.insert(0, "image", ids)
        onehot.to_csv(truth / f"ISIC2018_Task3_{split}_GroundTruth.csv", index=False)
        if split == "Training":
            lesions = [f"HAM_{i // 2:07d}" for i in range(count)]
            pd.DataFrame({"image": ids, "lesion_id": lesions, "diagnosis_confirm_type": "histopathology"}).to_csv(
                root / "ISIC2018_Task3_Training_LesionGroupings.csv", index=False
            )
    return root


def make_ham10000(root: Path, n: int = 84) -> Path:
    """HAM10000_metadata.csv with images split over HAM10000_images_part_1 and _part_2."""
    rows = []
    for i, dx in enumerate(diagnoses(n)):
        image_id = f"ISIC_{i:07d}"
        folder = root / f"HAM10000_images_part_{1 + i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{image_id}.jpg").write_bytes(jpeg(i))
        rows.append(
            (f"HAM_{i // 2:07d}", image_id, dx.lower(), "histo", 30 + i % 50, ["male", "female"][i % 2], "back")
        )
    columns = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]
    pd.DataFrame(rows, columns=columns).to_csv(root / "HAM10000_metadata.csv", index=False)
    return root


def make_isic2024(root: Path, patients: int = 20, per_patient: int = 12, hdf5: bool = True) -> Path:
    """The Kaggle layout (train-metadata.csv with all 55 real columns, crops in train-image.hdf5 or
    train-image/image/) from the synthetic SLICE-3D generator: patients * per_patient lesions, one malignant lesion
    in every other patient."""
    from lesion.data.slice3d import slice3d_table, write_slice3d

    n = patients * per_patient
    table = slice3d_table(n, patients, max(2, patients // 2), seed=patients)
    table["isic_id"] = [f"ISIC_{9000000 + k}" for k in range(n)]  # known ids, for tests that damage one
    return write_slice3d(root, table, hdf5=hdf5, folder=not hdf5)


def make_folder(root: Path, classes: tuple[str, ...] = ("benign", "malignant"), per_class: int = 20, splits=()) -> Path:
    for split in splits or (None,):
        base = root / split if split else root
        for c, name in enumerate(classes):
            (base / name).mkdir(parents=True)
            for i in range(per_class):
                (base / name / f"img_{c}_{i}.jpg").write_bytes(jpeg(c * 1000 + i))
    return root


def plant_signal(ckpt: str | Path, seed: int, gap: float = 3.0) -> dict[str, float]:
    """Rewrite a tiny run's classifier so that, on every image of its data (eval transforms, no TTA), the malignant
    minus benign logit is a planted score: `gap` * (y - 1/2) + N(0, 1) noise drawn from `seed`. A few training steps
    on two CPU cores learn whatever they happen to learn; tests that need val/test scores with signal get it by
    construction. The classifier's inputs (pooled features) outnumber no image, so the least-squares fit is exact;
    returns the AUROC of the planted score per split, and fails when the rewritten model does not reproduce it."""
    import torch
    from sklearn.metrics import roc_auc_score

    from lesion.data import build_datamodule
    from lesion.models.features import classifier_layers, pooled_features
    from lesion.models.loading import load_model

    model = load_model(ckpt)
    datamodule = build_datamodule(model.hparams.data, model.data_config)
    datamodule.setup()
    splits = ("train", "val", "test")
    images = {s: torch.stack([d["image"] for d in datamodule.dataset(s)]) for s in splits}
    labels = {s: torch.tensor(datamodule.dataset(s).labels, dtype=torch.float64) for s in splits}
    features = torch.cat([pooled_features(model, images[s]) for s in splits]).double()
    y = torch.cat([labels[s] for s in splits])
    target = gap * (y - 0.5) + torch.randn(len(y), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    design = torch.cat([features, torch.ones(len(y), 1, dtype=torch.float64)], dim=1)
    solution = torch.linalg.lstsq(design, target[:, None], driver="gelsd").solution.flatten()
    layer = classifier_layers(model)[0]
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.zero_()
        layer.weight[1] = solution[:-1].float()
        layer.bias[1] = float(solution[-1])
    raw = torch.load(ckpt, map_location="cpu", weights_only=False)
    raw["state_dict"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save(raw, ckpt)
    reloaded, start, aurocs = load_model(ckpt), 0, {}
    for s in splits:
        with torch.no_grad():
            logits = reloaded(images[s]).double()
        planted = target[start : start + len(logits)]
        start += len(logits)
        error = float((logits[:, 1] - logits[:, 0] - planted).abs().max())
        assert error < 1e-3, f"the planted signal did not take in {ckpt} ({s}: off by {error:.2g})"
        aurocs[s] = float(roc_auc_score(labels[s].numpy(), planted.numpy()))
    return aurocs


PAD_DIAGNOSES = ("ACK", "BCC", "MEL", "NEV", "SCC", "SEK")


def make_pad(
    root: Path, patients: int = 30, per_patient: int = 2, size: int = 40, shift=None, draw=None, first: int = 0
) -> Path:
    """PAD-UFES-20's layout (images/PAT_<patient>_<lesion>_<image>.jpg, metadata.csv with `image`, `diagnostic`,
    `patient_id`, `fitzpatrick`), every diagnosis several times, patients numbered from `first`. `draw(diagnosis,
    rng) -> BGR image` paints a photo (default: random patches); `shift(image, rng) -> image` restyles it (a second
    camera)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for p in range(patients):
        for j in range(per_patient):
            k, patient = p * per_patient + j, first + p
            name = f"images/PAT_{patient}_{k}_{k}.jpg"
            diagnosis = PAD_DIAGNOSES[(p + j) % len(PAD_DIAGNOSES)]
            if draw is None:
                image = cv2.imdecode(np.frombuffer(jpeg(5000 + k, size), np.uint8), cv2.IMREAD_COLOR)
            else:
                image = draw(diagnosis, np.random.default_rng([first, k]))
            if shift is not None:
                image = shift(image, np.random.default_rng(k))
            cv2.imwrite(str(root / name), image)
            rows.append((name, f"PAT_{patient}", k, diagnosis, 1 + p % 6, size, size))
    columns = ["image", "patient_id", "lesion_id", "diagnostic", "fitzpatrick", "width", "height"]
    pd.DataFrame(rows, columns=columns).to_csv(root / "metadata.csv", index=False)
    return root
