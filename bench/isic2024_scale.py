"""python bench/isic2024_scale.py [--workdir /tmp/lesion-isic2024] [--sizes 40106 401059]

ISIC-2024-scale data pipeline benchmark: synthetic SLICE-3D sets (about 130 px JPEG crops in one HDF5 file, a metadata
CSV with 1,042 patients and 393 positives at full size), then, per size, in a fresh process: datamodule set-up time,
loader throughput with 2 workers over one undersampled training epoch, and peak RSS (main process + workers).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import pandas as pd
from tqdm import tqdm

FULL, PATIENTS, POSITIVES = 401_059, 1_042, 393


def crop(rng: np.random.Generator, size: int = 130) -> bytes:
    """A lesion-like crop: skin tone, a darker irregular blob, noise; JPEG quality 90 like the challenge crops."""
    skin = rng.uniform([150, 110, 90], [235, 190, 170])
    image = np.ones((size, size, 3), np.float32) * skin
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    angle = np.arctan2(yy, xx)
    radius = 0.18 + 0.05 * np.sin(angle * rng.integers(2, 6) + rng.uniform(0, 6))
    blob = (np.sqrt(xx**2 + yy**2) < radius).astype(np.float32)
    image = image * (1 - 0.55 * cv2.GaussianBlur(blob, (9, 9), 3)[..., None])
    image += rng.normal(0, 6, image.shape)
    return cv2.imencode(".jpg", np.clip(image, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def generate(root: Path, n: int, seed: int = 0) -> Path:
    """train-image.hdf5 + train-metadata.csv with n images; patients and positives scale with n."""
    if (root / "train-metadata.csv").is_file():
        return root
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pool = [crop(rng) for _ in range(1024)]  # decoding cost is what matters; bytes repeat across ids
    patients = max(2, round(PATIENTS * n / FULL))
    positives = max(2, round(POSITIVES * n / FULL))
    ids = np.array([f"ISIC_{i:07d}" for i in range(n)])
    patient = rng.integers(0, patients, n)
    target = np.zeros(n, np.int64)
    target[rng.choice(n, positives, replace=False)] = 1
    meta = pd.DataFrame(
        {
            "isic_id": ids,
            "target": target,
            "patient_id": [f"IP_{p:07d}" for p in patient],
            "age_approx": rng.integers(20, 85, n) // 5 * 5,
            "sex": rng.choice(["male", "female"], n),
            "anatom_site_general": rng.choice(
                ["head/neck", "upper extremity", "posterior torso", "lower extremity"], n
            ),
            **{f"tbp_lv_{c}": rng.normal(30, 8, n).round(3) for c in ("A", "B", "C", "H", "L", "Lext", "areaMM2")},
            "lesion_id": np.where(target == 1, [f"IL_{i}" for i in range(n)], None),
            "iddx_full": np.where(target == 1, "Malignant::Melanoma", "Benign"),
            "mel_thick_mm": np.where(target == 1, 0.4, np.nan),
            "tbp_lv_dnn_lesion_confidence": rng.uniform(0, 100, n).round(2),
        }
    )
    with h5py.File(root / "train-image.hdf5", "w") as f:
        for i, image_id in enumerate(tqdm(ids, desc=f"writing {n:,} JPEGs", unit="img", mininterval=5)):
            f.create_dataset(image_id, data=np.void(pool[i % len(pool)]))
    meta.to_csv(root / "train-metadata.csv", index=False)
    return root


def measure(root: Path) -> dict:
    """Run in a fresh process: set-up time, one undersampled epoch with 2 workers, peak RSS."""
    from lesion.data import build_datamodule
    from lesion.models.backbones import backbone_data_config

    start = time.perf_counter()
    dm = build_datamodule(
        {"name": "isic2024", "root": str(root), "batch_size": 64, "num_workers": 2, "neg_ratio": 20},
        backbone_data_config("tf_efficientnet_lite0"),
    )
    dm.setup("fit")
    setup_s = time.perf_counter() - start
    loader = dm.train_dataloader()
    start, seen = time.perf_counter(), 0
    for batch in loader:
        seen += len(batch["label"])
    epoch_s = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "images": sum(len(f) for f in dm.frames.values()),
        "setup_s": round(setup_s, 1),
        "epoch_images": seen,
        "img_per_s": round(seen / epoch_s, 1),
        "peak_rss_main_mb": round(rss),
        "peak_rss_worker_mb": round(workers),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/lesion-isic2024")
    parser.add_argument("--sizes", type=int, nargs="+", default=[40_106, FULL])
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure))))
        return
    rows = []
    for n in args.sizes:
        root = generate(Path(args.workdir) / str(n), n)
        out = subprocess.run(
            [sys.executable, __file__, "--measure", str(root)],
            capture_output=True,
            text=True,
            env=os.environ | {"NO_ALBUMENTATIONS_UPDATE": "1"},
        )
        if out.returncode:
            sys.exit(out.stderr)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    header = f"{'images':>8} {'set-up s':>9} {'epoch imgs':>11} {'img/s (2 workers)':>18}"
    print(header + f" {'RSS main MB':>12} {'RSS worker MB':>14}")
    for r in rows:
        print(
            f"{r['images']:>8} {r['setup_s']:>9} {r['epoch_images']:>11} {r['img_per_s']:>18} "
            f"{r['peak_rss_main_mb']:>12} {r['peak_rss_worker_mb']:>14}"
        )


if __name__ == "__main__":
    main()
