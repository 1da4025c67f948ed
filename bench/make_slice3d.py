"""python bench/make_slice3d.py ROOT [--rows 10000] [--patients 200] [--positives 250] [--seed 11] [--truth F.csv]

Write a synthetic SLICE-3D (lesion.data.slice3d) in the Kaggle isic-2024-challenge layout: train-metadata.csv with
the real 55 columns and train-image.hdf5 with one crop per lesion, signal planted in the image, the tabular features,
relative to each patient, and a train-only leak column. --truth keeps the planted image signal (never in ROOT).
Then: python train.py -m experiment=isic2024_oof data.root=ROOT data.fold=0,1,2,3,4, and python stack.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lesion.data.slice3d import slice3d_table, write_slice3d  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--positives", type=int, default=250)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--truth", type=Path, help="write isic_id, target, image_signal here")
    args = parser.parse_args()
    if (args.root / "train-metadata.csv").exists():
        sys.exit(f"{args.root} already holds a train-metadata.csv: choose an empty folder")
    table = slice3d_table(args.rows, args.patients, args.positives, seed=args.seed)
    write_slice3d(args.root, table)
    if args.truth:
        table[["isic_id", "target", "image_signal"]].to_csv(args.truth, index=False)
    print(f"{args.rows:,} lesions of {args.patients} patients ({args.positives} malignant) written to {args.root}")


if __name__ == "__main__":
    main()
