"""python bench/isic2018_loader.py [--root ../shared/data/isic2018] [--images 2048] [--size 224]

Loader throughput on the real ISIC 2018 images (decode, resize, CLAHE, flips/rotation, normalise, collate), with 0,
1 and 2 workers, without the preprocessing cache, with a cold cache (first pass fills it) and a warm one.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from lesion.data import build_datamodule
from lesion.models.backbones import backbone_data_config


def images_per_second(loader, limit: int) -> float:
    start, seen = time.perf_counter(), 0
    for batch in loader:
        seen += len(batch["label"])
        if seen >= limit:
            break
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data/isic2018")
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    data_config = backbone_data_config("tf_efficientnet_lite0", args.size)
    transforms = {"clahe": True, "rotate": 20}
    print(f"ISIC 2018 train loader, {args.size} px, CLAHE + flips + rotation, batch 32, first {args.images} images")
    print(f"{'workers':>7} {'no cache img/s':>15} {'cold cache img/s':>17} {'warm cache img/s':>17}")
    for workers in args.workers:
        with tempfile.TemporaryDirectory() as cache_dir:
            row = []
            for cache in (False, True, True):
                config = {"name": "isic2018", "root": args.root, "num_workers": workers, "cache": cache}
                config |= {"cache_dir": cache_dir, "transforms": transforms}
                dm = build_datamodule(config, data_config)
                row.append(images_per_second(dm.train_dataloader(), args.images))
        print(f"{workers:>7} {row[0]:>15.0f} {row[1]:>17.0f} {row[2]:>17.0f}")


if __name__ == "__main__":
    main()
