"""python bench/gpu.py [--models resnet50_trunc efficientnet_b0 resnet50] [--modes fp32 bf16_cl bf16_cl_compile]

Training img/s on one GPU with synthetic data already on the device (224 px, batch 128), for each backbone config
and precision mode, plus the fraction of the FLOP-bound limit: training FLOPs per image (forward + backward, counted by
torch.utils.flop_counter) x img/s, over a bf16 matrix-product rate measured here. Needs only PyTorch and timm (and
PyYAML, a timm dependency): no Hydra, OmegaConf, albumentations or Lightning. `bench/gpu.sh` runs it.

Modes: fp32 (PyTorch defaults: cuDNN convolutions may use TF32), bf16_cl (bf16 autocast + channels_last),
bf16_cl_compile (the same, plus torch.compile; compile time is reported apart and not in img/s).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lesion.models.backbones import build_backbone  # noqa: E402

MODES = ("fp32", "bf16_cl", "bf16_cl_compile")


def backbone_config(name: str, size: int) -> dict:
    cfg = yaml.safe_load((ROOT / "conf" / "backbone" / f"{name}.yaml").read_text())
    # weights do not change speed
    return cfg | {"pretrained": False, "weights": None, "input_size": size, "allow_random_frozen": True}


def matmul_rate(device: str, n: int, repeats: int) -> float:
    """Achieved bf16 (CUDA) or fp32 (CPU) FLOP/s of an n x n matrix product."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def train_flops_per_image(net: torch.nn.Module, size: int, device: str) -> float:
    """Forward + backward FLOPs of one training step, per image (frozen stages cost their forward only)."""
    batch = 4
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.zeros(batch, dtype=torch.long, device=device)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(net(x), y).backward()
    net.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def memory_format_parity(name: str, size: int, device: str) -> dict:
    """How far a channels_last fp32 training step is from the NCHW one: relative L2 difference of the logits and of
    all parameter gradients together (`logits`, `grads`), and how far each layout's gradients are from the same step
    in float64 (`nchw_error`, `nhwc_error`: the rounding error each one carries). A speed option must not change the
    arithmetic beyond rounding: its error against float64 must stay of the order of NCHW's.

    The float64 step is the reference because a perturbation floor is not one: ReLU6 masks and train-mode BatchNorm
    make EfficientNets' gradients chaotic under 1e-6 changes of the input, by amounts that vary with the thread count.
    On the CPU, channels_last BatchNorm in train mode carries more rounding than NCHW's (measured for Lite0 at 64 px:
    4x with 2 threads, 11x with 1), still float32 rounding: a wrong layout would be off by O(1).

    Dropout is off: its masks are drawn in memory order, so the two layouts would drop different elements. And the
    difference is taken over all gradients at once: per parameter, gradients that are zero in exact arithmetic
    (BatchNorm biases whose every consumer is a 1x1 conv into a train-mode BatchNorm) give meaningless ratios."""
    x = torch.randn(8, 3, size, size, device=device, generator=torch.Generator(device).manual_seed(0))
    y = torch.arange(8, device=device) % 2
    cfg = backbone_config(name, size) | {"head_dropout": 0.0, "drop_rate": 0.0}

    def step(memory_format, dtype=torch.float32):
        torch.manual_seed(0)
        net = build_backbone(**cfg, num_classes=2).to(device, dtype).train().to(memory_format=memory_format)
        logits = net(x.to(dtype).contiguous(memory_format=memory_format))
        F.cross_entropy(logits, y).backward()
        grads = torch.cat([p.grad.double().flatten() for p in net.parameters() if p.grad is not None])
        return logits.detach().double(), grads

    def rel(a, b):
        return float((a - b).norm() / b.norm())

    logits, grads = step(torch.contiguous_format)
    logits_cl, grads_cl = step(torch.channels_last)
    _, exact = step(torch.contiguous_format, torch.float64)
    return {
        "logits": rel(logits_cl, logits),
        "grads": rel(grads_cl, grads),
        "nchw_error": rel(grads, exact),
        "nhwc_error": rel(grads_cl, exact),
    }


def measure(name: str, mode: str, args) -> dict:
    torch.manual_seed(0)
    net = build_backbone(**backbone_config(name, args.size), num_classes=2).to(args.device).train()
    flops = train_flops_per_image(net, args.size, args.device)
    channels_last = mode != "fp32"
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=memory_format)
    images = torch.randn(args.batch, 3, args.size, args.size, device=args.device).contiguous(
        memory_format=memory_format
    )
    labels = torch.randint(0, 2, (args.batch,), device=args.device)
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-5)
    model = torch.compile(net) if mode.endswith("compile") else net
    autocast = torch.autocast(args.device, dtype=torch.bfloat16, enabled=mode != "fp32")

    def step() -> None:
        with autocast:
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    start = time.perf_counter()
    for _ in range(args.warmup):  # includes compilation
        step()
    sync(args.device)
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(args.device)
    img_per_s = args.steps * args.batch / (time.perf_counter() - start)
    return {"model": name, "mode": mode, "img_per_s": img_per_s, "train_gflop_per_img": flops / 1e9,
            "achieved_tflops": flops * img_per_s / 1e12, "warmup_s": warmup_s}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet50_trunc", "efficientnet_b0", "resnet50"])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--matmul-n", type=int, default=8192)
    parser.add_argument("--json", default=os.environ.get("OUT") and str(Path(os.environ["OUT"]) / "gpu_bench.json"))
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    peak = matmul_rate(args.device, args.matmul_n, 50 if args.device == "cuda" else 2)
    print(f"{name}, torch {torch.__version__}; {args.size} px, batch {args.batch}")
    print(f"measured {'bf16' if args.device == 'cuda' else 'fp32'} matmul rate: {peak / 1e12:.1f} TFLOP/s")
    for model in args.models:
        gap = memory_format_parity(model, args.size, args.device)
        print(
            f"{model}: channels_last vs NCHW fp32, relative difference: logits {gap['logits']:.1e}, gradients "
            f"{gap['grads']:.1e}; gradients vs float64: NCHW {gap['nchw_error']:.1e}, "
            f"channels_last {gap['nhwc_error']:.1e}",
            flush=True,
        )
    header = (
        f"{'model':<16} {'mode':<16} {'img/s':>9} {'GFLOP/img':>10} {'TFLOP/s':>8} {'of matmul':>9} {'warmup s':>8}"
    )
    print(header)
    rows = []
    for model in args.models:
        for mode in args.modes:
            row = measure(model, mode, args) | {"fraction_of_matmul": None}
            row["fraction_of_matmul"] = row["achieved_tflops"] * 1e12 / peak
            rows.append(row)
            print(
                f"{model:<16} {mode:<16} {row['img_per_s']:>9.0f} {row['train_gflop_per_img']:>10.2f} "
                f"{row['achieved_tflops']:>8.1f} {row['fraction_of_matmul']:>9.1%} {row['warmup_s']:>8.1f}",
                flush=True,
            )
            if args.device == "cuda":
                torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "matmul_tflops": peak / 1e12, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
