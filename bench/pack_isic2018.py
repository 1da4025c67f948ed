"""python bench/pack_isic2018.py [--root ../shared/data/isic2018] [--out bench/data/isic2018]

ISIC 2018 Task 3 made to travel to a GPU machine, where only the working tree goes (64 MiB): the official layout
(the training JPEGs, the ground-truth CSV and the lesion groupings; ~40 MB) and the split every CPU run uses
(lesion-disjoint, seed 0) as `splits.csv`, so that there
    python train.py -m experiment=study_gpu data.root=bench/data/isic2018 data.split_file=bench/data/isic2018/splits.csv
trains on exactly the images the CPU rows did (bench/study_gpu.sh). `bench/data/` is git-ignored.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lesion.data import build_datamodule  # noqa: E402
from lesion.models.backbones import backbone_data_config  # noqa: E402

LAYOUT = ("ISIC2018_Task3_Training_GroundTruth", "ISIC2018_Task3_Training_LesionGroupings.csv")


def pack(root: Path, out: Path) -> dict[str, int]:
    """Copy the official layout of `root` to `out` (JPEGs the split uses, CSVs) and write its seed-0 split there."""
    datamodule = build_datamodule(
        {"name": "isic2018", "root": str(root), "task": "binary"}, backbone_data_config("resnet50")
    )
    datamodule.setup()
    images = out / "ISIC2018_Task3_Training_Input"
    images.mkdir(parents=True, exist_ok=True)
    reader = datamodule.reader()
    for frame in datamodule.frames.values():
        for image_id in frame["image_id"]:
            source = Path(reader.paths[image_id])
            shutil.copyfile(source, images / source.name)
    for name in LAYOUT:
        source = root / name
        if source.is_dir():
            shutil.copytree(source, out / name, dirs_exist_ok=True)
        elif source.is_file():
            shutil.copyfile(source, out / name)
    datamodule.save_splits(out / "splits.csv")
    return {split: len(frame) for split, frame in datamodule.frames.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "isic2018"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "data" / "isic2018"))
    args = parser.parse_args()
    out = Path(args.out)
    sizes = pack(Path(args.root), out)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    print(f"packed {sum(sizes.values()):,} images {sizes} into {out} ({total:.1f} MiB)")


if __name__ == "__main__":
    main()
