"""python bench/isic2024_scale.py [--workdir /tmp/lesion-isic2024] [--sizes 40106 401059]

ISIC-2024-scale data pipeline benchmark: synthetic SLICE-3D sets (lesion.data.slice3d: 89-171 px JPEG crops in one
HDF5 file, the real 55-column metadata CSV, 1,042 patients and 393 positives at full size), then, per size, in a
fresh process: datamodule set-up time, loader throughput with 2 workers over one undersampled training epoch, and
peak RSS (main process + workers).
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

from lesion.data.slice3d import slice3d_table, write_slice3d

FULL, PATIENTS, POSITIVES = 401_059, 1_042, 393


def generate(root: Path, n: int, seed: int = 0) -> Path:
    """The synthetic SLICE-3D generator's Kaggle layout with n images (patients and positives scale with n); 1,024
    rendered crops are shared across ids (decoding cost is what matters here)."""
    if (root / "train-metadata.csv").is_file():
        return root
    patients, positives = max(2, round(PATIENTS * n / FULL)), max(2, round(POSITIVES * n / FULL))
    return write_slice3d(root, slice3d_table(n, patients, positives, seed), pool=1024, seed=seed)


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
