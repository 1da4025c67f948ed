"""python bench/frozen.py [--backbone resnet50_trunc] [--size 224] [--batch 32] [--steps 6] [--rounds 2]

What freezing the stem, layer1 and layer2 saves in training: the same model with its config's frozen stages against
the same model fully trainable (backbone.freeze=[]).

- Proof that the frozen part keeps no activations and computes no gradients: every frozen module's output has
  requires_grad=False (autograd records nothing there), its parameters get no .grad, and the bytes autograd saves
  for backward (counted with torch.autograd.graph.saved_tensors_hooks) shrink.
- FLOPs of one training step (forward + backward, torch.utils.flop_counter) per image for both: their ratio is the
  predicted speed-up.
- Measured training img/s (bare forward/backward/Adam loop, rounds alternated, median) and peak RSS (each variant in
  its own process).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from timing import bare_loop  # noqa: E402

from lesion.models.module import LesionClassifier  # noqa: E402


def backbone_config(name: str, size: int, frozen: bool) -> dict:
    import yaml

    cfg = yaml.safe_load((ROOT / "conf" / "backbone" / f"{name}.yaml").read_text())
    cfg |= {"pretrained": False, "weights": None, "input_size": size, "allow_random_frozen": True}  # speed only
    return cfg | ({} if frozen else {"freeze": []})


def build(name: str, size: int, frozen: bool) -> LesionClassifier:
    torch.manual_seed(0)
    return LesionClassifier(backbone=backbone_config(name, size, frozen), optimizer={"opt": "adam", "lr": 1e-5})


def autograd_profile(model: LesionClassifier, size: int, batch: int) -> dict:
    """Saved-for-backward bytes, frozen-module outputs that require grad, frozen params with a grad, FLOPs/img."""
    frozen = [m for m in model.net.modules() if list(m.parameters(recurse=False))]
    frozen = [m for m in frozen if not any(p.requires_grad for p in m.parameters(recurse=False))]
    tracked = {"outputs": 0, "with_grad": 0}

    def watch(_module, _inputs, output) -> None:
        if isinstance(output, torch.Tensor):
            tracked["outputs"] += 1
            tracked["with_grad"] += int(output.requires_grad)

    hooks = [m.register_forward_hook(watch) for m in frozen]
    saved = {"bytes": 0}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved["bytes"] += tensor.untyped_storage().nbytes()
        return tensor

    x, y = torch.randn(batch, 3, size, size), torch.zeros(batch, dtype=torch.long)
    model.train()
    with FlopCounterMode(display=False) as counter, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        F.cross_entropy(model(x), y).backward()
    for hook in hooks:
        hook.remove()
    frozen_params = [p for m in frozen for p in m.parameters(recurse=False)]
    result = {
        "train_gflop_per_img": counter.get_total_flops() / batch / 1e9,
        "saved_for_backward_mb": saved["bytes"] / 1e6,
        "frozen_modules": len(frozen),
        "frozen_outputs_requiring_grad": tracked["with_grad"],
        "frozen_params_with_grad": sum(p.grad is not None for p in frozen_params),
    }
    model.zero_grad(set_to_none=True)
    return result


def one(args) -> dict:
    """Measured in this process: img/s over rounds and peak RSS (run in a child per variant)."""
    model = build(args.backbone, args.size, args.variant == "frozen")
    images, labels = torch.randn(args.batch, 3, args.size, args.size), torch.randint(0, 2, (args.batch,))
    speed = [bare_loop(model, images, labels, args.steps) for _ in range(args.rounds)]
    return {"img_per_s": speed, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50_trunc")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variant", choices=["frozen", "trainable"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(one(args)))
        return
    rows = {}
    for variant in ("frozen", "trainable"):
        rows[variant] = autograd_profile(build(args.backbone, args.size, variant == "frozen"), args.size, 4)
    speed = {"frozen": [], "trainable": []}
    rss = {}
    for _ in range(args.rounds):  # alternate the variants, one process each, so drift hits both alike
        for variant in ("frozen", "trainable"):
            cmd = [sys.executable, __file__, *sys.argv[1:], "--variant", variant, "--rounds", "1"]
            out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
            speed[variant] += out["img_per_s"]
            rss[variant] = max(rss.get(variant, 0), out["peak_rss_mb"])
    threads = torch.get_num_threads()
    print(f"{args.backbone}, {args.size} px, batch {args.batch}, {threads} threads, torch {torch.__version__}")
    print(f"{'variant':<10} {'img/s':>7} {'peak RSS MB':>12} {'saved for bwd MB/4 img':>23} {'GFLOP/img':>10} "
          f"{'frozen outputs w/ grad':>23} {'frozen params w/ grad':>22}")  # fmt: skip
    for variant, row in rows.items():
        row |= {"img_per_s": statistics.median(speed[variant]), "peak_rss_mb": rss[variant]}
        print(
            f"{variant:<10} {row['img_per_s']:>7.1f} {row['peak_rss_mb']:>12.0f} {row['saved_for_backward_mb']:>23.0f} "
            f"{row['train_gflop_per_img']:>10.2f} "
            f"{row['frozen_outputs_requiring_grad']:>10}/{row['frozen_modules']:<12} "
            f"{row['frozen_params_with_grad']:>22}"
        )
    predicted = rows["trainable"]["train_gflop_per_img"] / rows["frozen"]["train_gflop_per_img"]
    measured = rows["frozen"]["img_per_s"] / rows["trainable"]["img_per_s"]
    print(f"speed-up from freezing: predicted from FLOPs {predicted:.2f}x, measured {measured:.2f}x")
    memory = rows["frozen"]["saved_for_backward_mb"] / rows["trainable"]["saved_for_backward_mb"]
    print(f"activations saved for backward: frozen {memory:.2f}x of trainable")


if __name__ == "__main__":
    main()
