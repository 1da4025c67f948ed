"""python bench/quality_gate.py CKPT [--root ../shared/data/isic2018] [--max-images 400] [--ood residual|energy]
[--region 0.5] [--photos ../shared/data/pad_ufes_20_sample/images [--only SPLITS_CSV:test]]

The quality gate of a checkpoint on real lesions: its thresholds (the checkpoint's, or fitted here as train.py fits
them, from the run's own training images, val logits and pooled features, when it has none or when --ood asks for an
out-of-distribution score), then the share of the run's clean test
split it refuses, and what it answers for degraded copies of test images (blurred, darkened, shrunk, a flat colour)
and for pictures that are not skin close-ups (apples and oranges from the sanity set, crops of scikit-learn's
sample photographs), with the reasons. --photos: also the share of ordinary photos it refuses (every image under a
folder, e.g. the PAD-UFES-20 smartphone photos; --only keeps the ids a splits.csv puts in one split, e.g. an adapt.py
run's local test part). --region refits the gate judging exposure and sharpness in that centred share of the photo.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import cv2
import lightning as L
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lesion.data import build_datamodule  # noqa: E402
from lesion.data.apples_oranges import render_fruit  # noqa: E402
from lesion.models.loading import load_model  # noqa: E402
from lesion.screening.evaluation import training_splits  # noqa: E402
from lesion.screening.predictions import predict  # noqa: E402
from lesion.screening.quality import fit_on_datamodule  # noqa: E402
from lesion.serving.inference import Screener  # noqa: E402
from lesion.stats.quality import fits_features  # noqa: E402

SETTINGS = {"min_side": 100, "sharpness_percentile": 1.0, "exposure_percentile": 99.5, "exposure_floor": 0.05,
            "ood_percentile": 99.0, "ood": "residual", "ood_components": 128, "max_images": 2000,
            "region": 1.0}  # fmt: skip
DEGRADED = {
    "clean": lambda im, rng: im,
    "gaussian blur, sigma 3": lambda im, rng: cv2.GaussianBlur(im, (0, 0), 3),
    "darkened to 10 %": lambda im, rng: (im * 0.1).astype(np.uint8),
    "shrunk to 80x60": lambda im, rng: cv2.resize(im, (80, 60), interpolation=cv2.INTER_AREA),
    "flat colour": lambda im, rng: np.full_like(im, im.reshape(-1, 3).mean(0).astype(np.uint8)),
    "apple or orange (not skin)": lambda im, rng: cv2.resize(
        render_fruit(0, int(rng.integers(1 << 20)), 160)[0], (im.shape[1], im.shape[0]), interpolation=cv2.INTER_AREA
    ),
    "photo crop (not skin)": lambda im, rng: _photo_crop(rng),
}


def _photo_crop(rng: np.random.Generator) -> np.ndarray:
    """A random 4:3 crop of scikit-learn's two sample photographs (a temple, a flower), 80 to 400 px wide."""
    from sklearn.datasets import load_sample_images

    photo = load_sample_images().images[rng.integers(2)]
    width = int(rng.integers(80, 400))
    height = width * 3 // 4
    y, x = rng.integers(0, photo.shape[0] - height), rng.integers(0, photo.shape[1] - width)
    return np.ascontiguousarray(photo[y : y + height, x : x + width])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt")
    parser.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "isic2018"))
    parser.add_argument("--max-images", type=int, default=400, help="test images per condition (class-stratified)")
    parser.add_argument("--ood", choices=["residual", "energy"], help="refit the gate with this score")
    parser.add_argument("--region", type=float, help="refit the gate judging this centred share of the photo")
    parser.add_argument("--photos", help="a folder of ordinary photos: the share the gate refuses, with reasons")
    parser.add_argument("--only", help="SPLITS_CSV:SPLIT, the ids of --photos (relative paths, no suffix) to keep")
    args = parser.parse_args()
    model = load_model(args.ckpt)
    data = dict(model.hparams.data) | {"num_workers": 0, "cache": False}
    if data.get("name") != "multi":  # a multi-source run keeps its sources' roots
        data["root"] = args.root
    data["transforms"] = dict(model.deployment.transforms)
    splits = training_splits(model, args.ckpt)
    if splits:  # the run's own split: the gate is fitted on its training and val images, judged on its test images
        path = Path("/tmp/lesion-quality-splits.csv")
        splits[0].to_csv(path, index=False)
        data["split_file"] = str(path)
    datamodule = build_datamodule(data, model.data_config)
    datamodule.setup()
    if not model.deployment.quality or args.ood or args.region:
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
        settings = SETTINGS | {"ood": args.ood or SETTINGS["ood"], "region": args.region or SETTINGS["region"]}
        val = predict(model, datamodule.val_dataloader(), trainer, features=fits_features(settings))
        model.deployment.quality = fit_on_datamodule(model, datamodule, val, settings)
        print(f"fitted here with ood={settings['ood']}, region={settings['region']}:", end=" ")
    shown = {k: v for k, v in model.deployment.quality.items() if k not in ("percentiles", "feature_residual")}
    if "feature_residual" in model.deployment.quality:
        d = model.deployment.quality["feature_residual"]
        shown["feature_residual"] = {"components": d["components"], "max_residual": d["max_residual"]}
    print(shown)
    screener = Screener(model, quality={"enabled": True, "min_side": SETTINGS["min_side"]})
    ids = datamodule.frames["test"]["image_id"].tolist()
    rng = np.random.default_rng(0)
    ids = [ids[i] for i in sorted(rng.choice(len(ids), min(args.max_images, len(ids)), replace=False))]
    read = datamodule.reader()
    print("| condition | images | passed | refused | reasons |\n|---|---:|---:|---:|---|")
    for name, degrade in DEGRADED.items():
        reasons = collections.Counter()
        for start in range(0, len(ids), 32):
            images = [degrade(read(i), rng) for i in ids[start : start + 32]]
            with torch.no_grad():
                results = screener(images, ids[start : start + 32])
            reasons.update(r.quality or "passed" for r in results)
        passed = reasons.pop("passed", 0)
        text = ", ".join(f"{k} {v}" for k, v in reasons.most_common())
        print(
            f"| {name} | {len(ids)} | {passed} | {len(ids) - passed} ({(len(ids) - passed) / len(ids):.1%}) | {text} |"
        )
    if args.photos:
        print(photo_row(screener, Path(args.photos), args.only))


def photo_row(screener: Screener, root: Path, only: str | None) -> str:
    """The table row of ordinary photos under `root` (optionally only those a splits.csv puts in one split)."""
    import pandas as pd

    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if only:
        path, split = only.rsplit(":", 1)
        table = pd.read_csv(path, dtype=str)
        keep = {Path(i).name for i in table.loc[table["split"] == split, "image_id"]}
        files = [f for f in files if f.with_suffix("").name in keep]
    results = screener.screen_files(files, batch_size=32)
    reasons = collections.Counter(r.quality or ("error" if r.error else "passed") for r in results)
    passed = reasons.pop("passed", 0)
    text = ", ".join(f"{k} {v}" for k, v in reasons.most_common())
    name = f"photos under {root}" + (f" ({only})" if only else "")
    refused = len(files) - passed
    return f"| {name} | {len(files)} | {passed} | {refused} ({refused / max(len(files), 1):.1%}) | {text} |"


if __name__ == "__main__":
    main()
