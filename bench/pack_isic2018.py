"""python bench/pack_isic2018.py [--root ../shared/data/isic2018] [--out bench/data]

Packs ISIC 2018 Task 3 for the GPU machine, where only the working tree travels (64 MiB) and there is no Hydra or
albumentations: every image's original JPEG bytes (~40 MB), its binary label (malignant = MEL, BCC, AKIEC) and its
split, taken from the `isic2018` datamodule (lesion-disjoint, seed 0: the same split as every CPU run), into one
`isic2018_pack.npz`; plus EfficientNet-Lite0's ImageNet weights as fp16 safetensors (the one pretrained row).
`bench/data/` is git-ignored; carry it: run(command="bash bench/study_gpu.sh", carry=["bench/data"]).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lesion.data import build_datamodule  # noqa: E402
from lesion.models.backbones import backbone_data_config  # noqa: E402
from lesion.models.weights import packaged_state_dict  # noqa: E402

SPLITS = ("train", "val", "test")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "isic2018"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "data"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    datamodule = build_datamodule(
        {"name": "isic2018", "root": args.root, "task": "binary"}, backbone_data_config("resnet50")
    )
    datamodule.setup()
    reader = datamodule.reader()
    ids, labels, splits, blobs = [], [], [], []
    for code, split in enumerate(SPLITS):
        frame = datamodule.frames[split]
        for image_id, label in zip(frame["image_id"], frame["label"]):
            ids.append(image_id)
            labels.append(int(label))
            splits.append(code)
            blobs.append(np.frombuffer(Path(reader.paths[image_id]).read_bytes(), np.uint8))
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    np.savez(
        out / "isic2018_pack.npz",
        jpeg=np.concatenate(blobs),
        offsets=offsets,
        labels=np.array(labels, np.int64),
        splits=np.array(splits, np.int8),
        image_ids=np.array(ids),
        split_names=np.array(SPLITS),
    )
    weights = {k: v.half().contiguous() for k, v in packaged_state_dict("tf_efficientnet_lite0").items()}
    save_file(weights, out / "tf_efficientnet_lite0.safetensors")
    sizes = {s: int((np.array(splits) == i).sum()) for i, s in enumerate(SPLITS)}
    total = sum(p.stat().st_size for p in out.iterdir()) / 2**20
    print(f"packed {len(ids):,} images {sizes}, {sum(labels):,} malignant, into {out} ({total:.1f} MiB)")


if __name__ == "__main__":
    main()
