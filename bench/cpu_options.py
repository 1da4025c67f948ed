"""python bench/cpu_options.py [--backbones resnet50_trunc efficientnet_lite0] [--size 224] [--batch 32] [--steps 8]

CPU speed options, each against fp32 in the same process: channels_last (model.channels_last), bf16 autocast
(trainer.precision=bf16-mixed), both, and torch.compile (model.compile; compile time reported apart). Training img/s
of the bare forward/backward/Adam step on a LesionClassifier with in-memory synthetic images. A default is kept
only if it measurably helps here (see bench/README.md).

The options are interleaved step by step (one step of each, in an order rotated every step), so the machine's drift
hits them all alike; "vs fp32" is the median over steps of fp32's step time over the option's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from timing import BareStep, rotated  # noqa: E402

from lesion.models.module import LesionClassifier  # noqa: E402

OPTIONS = {
    "fp32": {},
    "channels_last": {"channels_last": True},
    "bf16": {"bf16": True},
    "bf16+channels_last": {"channels_last": True, "bf16": True},
    "compile": {"compile": True},
    "compile+channels_last": {"compile": True, "channels_last": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["resnet50_trunc", "efficientnet_lite0"])
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="timed steps of each option, interleaved")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.size} px, batch {args.batch}")
    print(f"{'backbone':<20} {'option':<20} {'img/s':>7} {'vs fp32':>8} {'warm-up s':>10}")
    for name in args.backbones:
        cfg = yaml.safe_load((ROOT / "conf" / "backbone" / f"{name}.yaml").read_text())
        cfg |= {"pretrained": False, "weights": None, "input_size": args.size, "allow_random_frozen": True}
        images, labels = torch.randn(args.batch, 3, args.size, args.size), torch.randint(0, 2, (args.batch,))
        steps, warmups, times = {}, {}, {option: [] for option in args.options}
        for option in args.options:
            flags = dict(OPTIONS[option])
            bf16 = flags.pop("bf16", False)
            torch.manual_seed(0)
            model = LesionClassifier(backbone=cfg, optimizer={"opt": "adam", "lr": 1e-5}, **flags)
            steps[option] = BareStep(model, bf16)
            start = time.perf_counter()
            for _ in range(2):  # compiles, when asked
                steps[option](images, labels)
            warmups[option] = time.perf_counter() - start
        for i in range(args.steps):
            for option in rotated(args.options, i):
                start = time.perf_counter()
                steps[option](images, labels)
                times[option].append(time.perf_counter() - start)
        base = times[args.options[0]]
        for option in args.options:
            speed = args.batch * args.steps / sum(times[option])
            ratio = statistics.median(b / t for b, t in zip(base, times[option], strict=True))
            print(f"{name:<20} {option:<20} {speed:>7.1f} {ratio:>8.2f} {warmups[option]:>10.1f}", flush=True)
        del steps


if __name__ == "__main__":
    main()
