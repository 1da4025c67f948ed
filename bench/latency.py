"""python bench/latency.py [--backbones resnet50_trunc efficientnet_lite0] [--runs 50] [--threads 2]

Single-image CPU latency of the exported screening network (normalisation, temperature and malignant sum included),
PyTorch eager (no_grad) against ONNX Runtime, median and 90th percentile of --runs calls after warm-up, with the file
sizes of the ONNX model and of the weights. Weights are random (pretrained=false): latency does not depend on them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lesion.models.module import LesionClassifier  # noqa: E402
from lesion.serving.export import ScreeningNet, export_onnx  # noqa: E402


def timed(call, runs: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return times


def measure(name: str, args, options) -> None:
    import onnxruntime as ort

    cfg = yaml.safe_load((ROOT / "conf" / "backbone" / f"{name}.yaml").read_text())
    model = LesionClassifier(backbone=cfg | {"pretrained": False, "weights": None, "allow_random_frozen": True}).eval()
    size = model.data_config["input_size"][-1]
    image = torch.rand(1, 3, size, size)
    net = ScreeningNet(model).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_onnx(model, path)
        weights = Path(tmp) / "weights.pt"
        torch.save(model.net.state_dict(), weights)
        onnx_mb, weights_mb = path.stat().st_size / 1e6, weights.stat().st_size / 1e6
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"image": image.numpy()}
    with torch.no_grad():
        eager = timed(lambda: net(image), args.runs)
        reference = net(image)[1].numpy()
    runtime = timed(lambda: session.run(["p_malignant"], feed), args.runs)
    assert np.abs(session.run(["p_malignant"], feed)[0] - reference).max() <= 1e-4
    e50, o50 = statistics.median(eager), statistics.median(runtime)
    e90, o90 = np.percentile(eager, 90), np.percentile(runtime, 90)
    print(
        f"{name:<20} {size:>4} {e50:>12.1f} {e90:>6.1f} {o50:>10.1f} {o90:>6.1f} {o50 / e50:>9.2f} "
        f"{onnx_mb:>8.1f} {weights_mb:>10.1f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["resnet50_trunc", "efficientnet_lite0"])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    import onnxruntime as ort

    torch.set_num_threads(args.threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    print(
        f"torch {torch.__version__}, onnxruntime {ort.__version__}, {args.threads} threads, batch 1, {args.runs} runs"
    )
    print(f"{'backbone':<20} {'px':>4} {'eager ms p50':>12} {'p90':>6} {'ORT ms p50':>10} {'p90':>6} "
          f"{'ORT/eager':>9} {'ONNX MB':>8} {'weights MB':>10}")  # fmt: skip
    for name in args.backbones:
        measure(name, args, options)


if __name__ == "__main__":
    main()
