"""python bench/overhead.py [--backbones resnet50_trunc efficientnet_lite0] [--size 224] [--batch 32] [--steps 20]
                          [--rounds 2] [--real ../shared/data/isic2018] [--real-workers 0 2]

Framework overhead: training img/s through train.py (Hydra config, LightningModule, torchmetrics, CSV logging,
progress bar, checkpointing; in-memory synthetic data) against a bare PyTorch loop doing the same
forward/backward/Adam step on the same model. Target ratio >= 0.95.

With --real: the same train.py run on the real ISIC 2018 images through the data pipeline (flips and rotation,
preprocessing cache on and warmed first), against the in-memory synthetic rate. Target ratio >= 0.9: the data
pipeline is never the bottleneck.

Separate runs on this shared 2-core machine drift by 15-30 %, more than the effects measured here. So every Lightning
step is paired with a bare step on a twin model run right after it in the same process (timing.PairedSteps), and the
ratio is taken per pair: ratio = bare step time / Lightning step time, median over the timed steps. Real against
synthetic compares those paired ratios (the bare half is the same in-memory step in both runs, so it cancels).
Rounds repeat every run, in an order rotated from round to round; the table gives medians over rounds and the range.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

PLACEHOLDER = "/tmp/lesion-bench-output-dir"  # replaced by a temporary dir per run

from timing import rotated  # noqa: E402

import lesion.runs.config  # noqa: E402,F401  (run_id resolver)
from lesion.runs.config import to_plain  # noqa: E402
from train import train  # noqa: E402


def config(
    backbone: str, size: int, batch: int, steps: int, extra: list[str], real: str | None = None, workers: int = 0
) -> dict:
    data = (
        ["data=isic2018", f"data.root={real}", "data.cache=true", f"data.num_workers={workers}"]
        if real
        else ["data=synthetic", f"data.num_images={int((steps + 4) * batch / 0.8) + 2 * batch}"]
    )
    overrides = [
        f"backbone={backbone}",
        f"backbone.input_size={size}",
        *data,
        f"data.batch_size={batch}",
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={steps + 4}",  # 3 warm-up steps, and the last step has no pair
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "+trainer.limit_predict_batches=2",  # the post-fit operating point is not timed: keep it short
        "trainer.enable_model_summary=false",
        "operating_point.bootstrap_resamples=0",
        "callbacks.extra=[{_target_:timing.PairedSteps}]",
        f"paths.output_dir={PLACEHOLDER}",
        *extra,
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return to_plain(compose("train", overrides=overrides))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["resnet50_trunc", "efficientnet_lite0"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="timed (paired) steps per run, after 3 warm-up steps")
    parser.add_argument("--rounds", type=int, default=2, help="repetitions of every run, order rotated")
    parser.add_argument("--extra", nargs="*", default=[], help="more train.py overrides, e.g. model.channels_last=true")
    parser.add_argument("--real", default=None, help="ISIC 2018 root: also train on the real images (cache on)")
    parser.add_argument(
        "--real-workers", type=int, nargs="+", default=[0, 2], help="loader workers: one real-data run per value"
    )
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.size} px, batch {args.batch}, "
        f"{args.steps} paired steps per run, {args.rounds} rounds"
    )
    reals = {f"real, {w} workers": w for w in args.real_workers} if args.real else {}  # none without --real
    rows = []
    for backbone in args.backbones:
        configs = {"synthetic": config(backbone, args.size, args.batch, args.steps, args.extra)}
        for name, workers in reals.items():
            configs[name] = config(backbone, args.size, args.batch, args.steps, args.extra, args.real, workers)
        if reals:
            warm_cache(configs[next(iter(reals))])
        results = {name: [] for name in configs}
        names = list(configs)
        for r in range(args.rounds):
            for name in rotated(names, r):
                results[name].append(paired_run(configs[name]))
            print(f"  {backbone} round {r + 1}: " + ", ".join(summary(n, results[n][-1]) for n in names), flush=True)
        rows.append((backbone, results))
    print()
    header = "| backbone | bare img/s | train.py img/s | train.py / bare (range) |"
    header += "".join(f" train.py img/s, {name} | real / synthetic (range) |" for name in reals)
    print(header)
    print("|---|---:|---:|---:|" + "---:|---:|" * len(reals))
    for backbone, results in rows:
        synthetic = results["synthetic"]
        line = f"| {backbone} | {median(synthetic, 'bare_img_per_s'):.1f} "
        line += f"| {median(synthetic, 'lightning_img_per_s'):.1f} "
        line += f"| {spread([r['ratio_median'] for r in synthetic])} |"
        for name in reals:
            ratios = [a["ratio_median"] / b["ratio_median"] for a, b in zip(results[name], synthetic, strict=True)]
            line += f" {median(results[name], 'lightning_img_per_s'):.1f} | {spread(ratios)} |"
        print(line)


def paired_run(cfg: dict) -> dict:
    """train.py on `cfg` (output dir PLACEHOLDER) with every step paired; timing.PairedSteps' figures."""
    with tempfile.TemporaryDirectory() as out:
        cfg = json.loads(json.dumps(cfg).replace(PLACEHOLDER, out))
        train(cfg)
        return json.loads((Path(out) / "paired_steps.json").read_text())


def summary(name: str, result: dict) -> str:
    return (
        f"{name} {result['lightning_img_per_s']:.1f} img/s vs bare {result['bare_img_per_s']:.1f} "
        f"(ratio {result['ratio_median']:.3f})"
    )


def median(results: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in results)


def spread(values: list[float]) -> str:
    """Median with the range."""
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def warm_cache(cfg: dict) -> None:
    """One pass over the training images fills the preprocessing cache, as a first epoch would."""
    from lesion.data import build_datamodule
    from lesion.models.backbones import backbone_data_config

    datamodule = build_datamodule(cfg["data"], backbone_data_config(**cfg["backbone"]))
    for _ in datamodule.train_dataloader():
        pass


if __name__ == "__main__":
    main()
