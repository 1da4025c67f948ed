"""python bench/study_gpu.py --pack bench/data/isic2018_pack.npz [--rows ...] [--budget-s 400] [--out DIR]

The study comparison under the study's own protocol, on one GPU, without Hydra or albumentations (bench/study_gpu.sh
runs it on the GPU machine). Protocol: 224 px, CLAHE (clip 2, 8x8 tiles, on the L channel of LAB), flips and
rotation +-20 deg, batch 8 (eval 16), Adam 1e-5, class weights [1, 10], early stopping on val AUROC with patience 20,
at most 30 epochs; bf16 autocast + channels_last. Same lesion-disjoint splits as the CPU runs (from the pack).

All rows train at once, one process each on the same GPU (a batch of 8 leaves an H100 mostly idle), each with a
wall-clock budget: a row that reaches it stops and reports how many epochs it finished. After training: temperature
scaling and the threshold for sensitivity 0.8 on val, then test AUROC, pAUC80, sensitivity and specificity at that
threshold with 1,000-resample bootstrap CIs (lesion.stats.operating_point), and train vs val loss at the best epoch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lesion.models.backbones import backbone_data_config, build_backbone  # noqa: E402
from lesion.stats.calibration import fit_temperature  # noqa: E402
from lesion.stats.metrics import screening_metrics  # noqa: E402
from lesion.stats.operating_point import bootstrap_ci, threshold_for_sensitivity  # noqa: E402

ROWS = {  # study_row name -> (backbone config, LAuReL)
    "resnet50_layer2": ("resnet50_layer2", "none"),
    "resnet50": ("resnet50", "none"),
    # resnet50_frozen_layer4 is left out: from scratch, with every stage trained, it is resnet50
    "resnet50_trunc": ("resnet50_trunc", "none"),
    "vgg16": ("vgg16", "none"),
    "efficientnet_b0": ("efficientnet_b0", "none"),
    "efficientnet_lite0": ("efficientnet_lite0", "none"),
    "resnet50_trunc_laurel_rw": ("resnet50_trunc", "rw"),
    "resnet50_trunc_laurel_lr": ("resnet50_trunc", "lr"),
}
PROTOCOL = {"size": 224, "batch": 8, "eval_batch": 16, "lr": 1e-5, "class_weights": [1.0, 10.0], "patience": 20,
            "max_epochs": 30, "rotate": 20.0, "clahe_clip": 2.0, "clahe_grid": 8, "seed": 42}  # fmt: skip


def preprocess(pack: Path, size: int, cache: Path) -> Path:
    """Decode, resize and CLAHE every image once (OpenCV, all cores) into a uint8 N x size x size x 3 array."""
    from concurrent.futures import ThreadPoolExecutor

    import cv2

    data = np.load(pack)
    jpeg, offsets = data["jpeg"], data["offsets"]
    clahe = cv2.createCLAHE(clipLimit=PROTOCOL["clahe_clip"], tileGridSize=(PROTOCOL["clahe_grid"],) * 2)

    def one(i: int) -> np.ndarray:
        bgr = cv2.imdecode(jpeg[offsets[i] : offsets[i + 1]], cv2.IMREAD_COLOR)
        rgb = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (size, size), interpolation=cv2.INTER_LINEAR)
        lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
        lab[..., 0] = clahe.apply(lab[..., 0])
        return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        images = np.stack(list(pool.map(one, range(len(offsets) - 1))))
    np.save(cache, images)
    return cache


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal/vertical flips and rotation (reflect padding) of a float batch, on its device."""
    n = x.shape[0]
    flips = torch.rand(n, 2, generator=generator, device=x.device) < 0.5
    x = torch.where(flips[:, 0, None, None, None], x.flip(-1), x)
    x = torch.where(flips[:, 1, None, None, None], x.flip(-2), x)
    angle = (torch.rand(n, generator=generator, device=x.device) * 2 - 1) * math.radians(PROTOCOL["rotate"])
    cos, sin = angle.cos(), angle.sin()
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def run_row(row: str, args) -> dict:
    torch.manual_seed(PROTOCOL["seed"])
    if args.device == "cpu":  # the rows run side by side: one thread each, or they fight over the cores
        torch.set_num_threads(1)
    device = torch.device(args.device)
    name, laurel = ROWS[row]
    cfg = yaml.safe_load((ROOT / "conf" / "backbone" / f"{name}.yaml").read_text())
    cfg |= {"input_size": PROTOCOL["size"], "laurel": laurel, "pretrained": False}
    lite0 = Path(args.pack).parent / "tf_efficientnet_lite0.safetensors"
    if cfg["model_name"] == "tf_efficientnet_lite0" and lite0.is_file():
        cfg["weights"] = str(lite0)
    if not cfg.get("weights"):  # no hub on the device machine: from scratch, every stage trained (never frozen random)
        cfg["freeze"] = []
    init = "ImageNet" if cfg.get("weights") else "from scratch, every stage trained"
    net = build_backbone(**cfg, num_classes=2).to(device).to(memory_format=torch.channels_last)
    data_cfg = backbone_data_config(**cfg)
    mean = torch.tensor(data_cfg["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(data_cfg["std"], device=device).view(1, 3, 1, 1)
    pack = np.load(args.pack)
    images = torch.from_numpy(np.load(args.cache, mmap_mode="r")[:]).to(device).permute(0, 3, 1, 2)  # uint8 NCHW
    labels = torch.from_numpy(pack["labels"]).to(device)
    splits = {
        s: torch.from_numpy(np.flatnonzero(pack["splits"] == i)).to(device) for i, s in enumerate(pack["split_names"])
    }
    if PROTOCOL.get("limit"):  # --smoke: `limit` images of each split, evenly spaced so both classes stay
        limit = PROTOCOL["limit"]
        splits = {s: index[:: max(len(index) // limit, 1)][:limit] for s, index in splits.items()}
    weight = torch.tensor(PROTOCOL["class_weights"], device=device)
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=PROTOCOL["lr"])
    generator = torch.Generator(device=device).manual_seed(PROTOCOL["seed"])
    # bf16 on the GPU only: a CPU without bf16 instructions (AVX2) emulates it, over 15x slower than fp32 here.
    bf16 = device.type == "cuda"

    def batch(index: torch.Tensor, train: bool) -> torch.Tensor:
        x = images[index].float() / 255
        if train:
            x = augment(x, generator)
        return ((x - mean) / std).contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def logits_of(split: str) -> torch.Tensor:
        net.eval()
        index = splits[split]
        out = []
        for start in range(0, len(index), PROTOCOL["eval_batch"]):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out.append(net(batch(index[start : start + PROTOCOL["eval_batch"]], False)).float())
        return torch.cat(out)

    deadline = time.time() + args.budget_s
    best = {"auroc": -1.0}
    history, started, stopped = [], time.time(), "max_epochs"
    train_index = splits["train"]
    for epoch in range(PROTOCOL["max_epochs"]):
        net.train()
        order = train_index[torch.randperm(len(train_index), generator=generator, device=device)]
        losses = []
        for start in range(0, len(order), PROTOCOL["batch"]):
            index = order[start : start + PROTOCOL["batch"]]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(net(batch(index, True)).float(), labels[index], weight=weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
        val = logits_of("val")
        y_val = labels[splits["val"]]
        auroc = screening_metrics(val.softmax(-1)[:, 1].cpu(), y_val.cpu())["auroc"]
        row_history = {"epoch": epoch, "train_loss": float(torch.stack(losses).mean()),
                       "val_loss": float(F.cross_entropy(val, y_val, weight=weight)), "val_auroc": auroc}  # fmt: skip
        history.append(row_history)
        if auroc > best["auroc"]:
            best = row_history | {"auroc": auroc, "state": {k: v.clone() for k, v in net.state_dict().items()}}
        elif epoch - best["epoch"] >= PROTOCOL["patience"]:
            stopped = "early_stopping"
            break
        if time.time() > deadline:
            stopped = "time_budget"
            break
    fit_seconds = time.time() - started
    net.load_state_dict(best["state"])
    val, test = logits_of("val"), logits_of("test")
    y_val, y_test = labels[splits["val"]].cpu(), labels[splits["test"]].cpu()
    temperature = fit_temperature(val.cpu(), y_val)
    p_val = (val.cpu() / temperature).softmax(-1)[:, 1]
    threshold = threshold_for_sensitivity(p_val, y_val, 0.8)
    p_test = (test.cpu() / temperature).softmax(-1)[:, 1]
    result = {"row": row, "init": init, "epochs": len(history), "stopped": stopped, "best_epoch": best["epoch"],
              "train_loss_at_best": best["train_loss"], "val_loss_at_best": best["val_loss"],
              "fit_seconds": round(fit_seconds, 1),
              "train_img_per_s": round(len(history) * len(train_index) / fit_seconds, 1),
              "threshold": threshold, "temperature": temperature}  # fmt: skip
    result |= {f"val/{k}": v for k, v in screening_metrics(p_val, y_val).items() if k in ("auroc", "pauc80")}
    result |= {f"test/{k}": v for k, v in screening_metrics(p_test, y_test).items() if k in ("auroc", "pauc80")}
    result |= {f"test_op/{k}": v for k, v in screening_metrics(p_test, y_test, threshold).items()}
    for name, interval in bootstrap_ci(p_test, y_test, threshold, 1000, 0.95).items():
        result[f"test_op/{name}_ci"] = list(interval)
    return result


def table(rows: list[dict]) -> str:
    def ci(row: dict, key: str) -> str:
        low, high = row.get(f"test_op/{key}_ci", [float("nan")] * 2)
        return f"{row[f'test_op/{key}']:.3f} ({low:.3f}-{high:.3f})"

    lines = [
        "| row | init | epochs (stop) | val AUROC | test AUROC (95% CI) | test pAUC80 | sensitivity (95% CI) | "
        "specificity (95% CI) | train / val loss at best | img/s |",
        "|---|---|---|---:|---|---:|---|---|---|---:|",
    ]
    for r in sorted(rows, key=lambda r: -r.get("val/auroc", 0)):
        if "error" in r:
            lines.append(f"| {r['row']} | | failed: {r['error'][:80]} | | | | | | | |")
            continue
        lines.append(
            f"| {r['row']} | {r['init']} | {r['epochs']} ({r['stopped']}) | {r['val/auroc']:.3f} | {ci(r, 'auroc')} | "
            f"{r['test/pauc80']:.3f} | {ci(r, 'recall')} | {ci(r, 'specificity')} | "
            f"{r['train_loss_at_best']:.3f} / {r['val_loss_at_best']:.3f} | {r['train_img_per_s']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", default=str(ROOT / "bench" / "data" / "isic2018_pack.npz"))
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--budget-s", type=float, default=400, help="training wall-clock budget per row")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "bench" / "data"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cache", default="/tmp/isic2018_224_clahe.npy")
    parser.add_argument(
        "--smoke", action="store_true", help="a CPU check of the script: 64 px, 1 epoch, 48 images a split"
    )
    parser.add_argument("--row", help=argparse.SUPPRESS)  # worker mode
    args = parser.parse_args()
    if args.smoke:
        PROTOCOL.update(size=64, max_epochs=1, limit=48)
    if args.row:
        try:
            print("RESULT " + json.dumps(run_row(args.row, args)), flush=True)
        except Exception as err:  # noqa: BLE001  (a failed row is reported in the table, the others go on)
            print("RESULT " + json.dumps({"row": args.row, "error": f"{type(err).__name__}: {err}"}), flush=True)
        return
    start = time.time()
    if not Path(args.pack).is_file():
        sys.exit(f"{args.pack} is missing: run `python bench/pack_isic2018.py` where ../shared/data/isic2018 exists")
    preprocess(Path(args.pack), PROTOCOL["size"], Path(args.cache))
    print(f"preprocessed in {time.time() - start:.0f} s; training {len(args.rows)} rows at once", flush=True)
    common = ["--pack", args.pack, "--budget-s", str(args.budget_s), "--device", args.device, "--cache", args.cache]
    common += ["--smoke"] if args.smoke else []
    workers = [
        subprocess.Popen([sys.executable, __file__, *common, "--row", row], stdout=subprocess.PIPE, text=True)
        for row in args.rows
    ]
    rows = []
    for row, worker in zip(args.rows, workers):
        out, _ = worker.communicate()
        lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
        rows.append(json.loads(lines[-1][7:]) if lines else {"row": row, "error": f"exit {worker.returncode}"})
    text = table(rows)
    print(text)
    print(f"total {time.time() - start:.0f} s on {torch.cuda.get_device_name() if args.device == 'cuda' else 'CPU'}")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "study_gpu.json").write_text(json.dumps({"protocol": PROTOCOL, "rows": rows}, indent=2))
    (out_dir / "study_gpu.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
