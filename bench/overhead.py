"""python bench/overhead.py [--backbones resnet50_trunc efficientnet_lite0] [--size 224] [--batch 32] [--steps 12]
                          [--real ../shared/data/isic2018]

Framework overhead: training img/s through train.py (Hydra config, LightningModule, CSV logging, progress bar,
checkpointing; in-memory synthetic data) against a bare PyTorch loop doing the same forward/backward/Adam step on the
same model, measured side by side in one process. Target ratio >= 0.95.

With --real: the same train.py run on the real ISIC 2018 images through the data pipeline (2 workers, flips and
rotation, preprocessing cache on and warmed first), against the in-memory synthetic rate. Target ratio >= 0.9: the
data pipeline is never the bottleneck.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from timing import bare_loop  # noqa: E402

PLACEHOLDER = "/tmp/lesion-bench-output-dir"  # replaced by a temporary dir per run

import lesion.config  # noqa: E402,F401  (run_id resolver)
from lesion.config import to_plain  # noqa: E402
from lesion.module import LesionClassifier  # noqa: E402
from train import train  # noqa: E402


def config(
    backbone: str, size: int, batch: int, steps: int, out: str, extra: list[str], real: str | None = None, workers=2
) -> dict:
    data = (
        ["data=isic2018", f"data.root={real}", "data.cache=true", f"data.num_workers={workers}"]
        if real
        else ["data=synthetic", f"data.num_images={int((steps + 3) * batch / 0.8) + 2 * batch}"]
    )
    overrides = [
        f"backbone={backbone}",
        f"backbone.input_size={size}",
        *data,
        f"data.batch_size={batch}",
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={steps + 3}",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "trainer.enable_model_summary=false",
        "callbacks.progress_bar=null",
        "operating_point.bootstrap_resamples=0",
        "callbacks.extra=[{_target_:timing.StepTimer}]",
        f"paths.output_dir={out}",
        *extra,
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return to_plain(compose("train", overrides=overrides))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["resnet50_trunc", "efficientnet_lite0"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--extra", nargs="*", default=[], help="more train.py overrides, e.g. model.channels_last=true")
    parser.add_argument("--real", default=None, help="ISIC 2018 root: also train on the real images (cache on)")
    parser.add_argument("--real-workers", type=int, default=2, help="loader workers for the real-data run")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.size} px, batch {args.batch}")
    real_header = f" {'real-data img/s':>15} {'real/synthetic':>14}" if args.real else ""
    print(f"{'backbone':<20} {'bare img/s':>10} {'train.py img/s':>15} {'ratio':>6}{real_header}")
    for backbone in args.backbones:
        cfg = config(backbone, args.size, args.batch, args.steps, "unused", args.extra)
        framework = timed_train(config(backbone, args.size, args.batch, args.steps, PLACEHOLDER, args.extra))
        torch.manual_seed(0)
        model = LesionClassifier(backbone=cfg["backbone"], **{k: v for k, v in cfg["model"].items()})
        images = torch.randn(args.batch, 3, args.size, args.size)
        labels = torch.randint(0, 2, (args.batch,))
        bare = bare_loop(model, images, labels, args.steps)
        line = f"{backbone:<20} {bare:>10.1f} {framework:>15.1f} {framework / bare:>6.3f}"
        if args.real:
            real_cfg = config(
                backbone, args.size, args.batch, args.steps, PLACEHOLDER, args.extra, args.real, args.real_workers
            )
            warm_cache(real_cfg)
            real = timed_train(real_cfg)
            line += f" {real:>15.1f} {real / framework:>14.3f}"
        print(line, flush=True)


def timed_train(cfg: dict) -> float:
    """train.py's img/s (StepTimer) for a config whose output dir is PLACEHOLDER."""
    with tempfile.TemporaryDirectory() as out:
        cfg = json.loads(json.dumps(cfg).replace(PLACEHOLDER, out))
        train(cfg)
        return json.loads((Path(out) / "step_timer.json").read_text())["img_per_s"]


def warm_cache(cfg: dict) -> None:
    """One pass over the training images fills the preprocessing cache, as a first epoch would."""
    from lesion.backbones import backbone_data_config
    from lesion.data import build_datamodule

    datamodule = build_datamodule(cfg["data"], backbone_data_config(**cfg["backbone"]))
    for _ in datamodule.train_dataloader():
        pass


if __name__ == "__main__":
    main()
