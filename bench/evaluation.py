"""python bench/evaluation.py [--ckpt CKPT] [--root ../shared/data/isic2018] [--images 256] [--retain 0 2048]
                             [--precisions 32-true bf16-mixed] [--override KEY=VALUE ...] [--out F.json]

Evaluation, stage by stage, in images per second, beside the training throughput of the same network and input size.
The network: the checkpoint's, or (without --ckpt) the recipe's (experiment=isic2018_cpu_best: EfficientNet-Lite0,
225x300, flip TTA, channels_last) built from its config; the arithmetic is the same whatever the weights. Each
allocator setting (`allocator.retain_mb`, lesion.runs.allocator) runs in a fresh process (glibc's settings last the
process's life); within it, each precision:

- decode + preprocess: the test loader alone (the recipe's workers and image cache; no network);
- forward, one view: the network on one in-memory batch of the test loader (eval batch size), no TTA;
- forward, TTA: the same batch through the model (its `tta` views averaged), as trainer.predict runs it;
- + feature capture: the same, capturing the pooled features the quality gate is fitted on (after_fit on val);
- whole (trainer.predict): `lesion.screening.predictions.predict` over --images test images with feature capture,
  loader included: what after_fit runs on val and eval.py on test;
- predict.py (Screener): lesion.serving.inference.Screener over the same images' files with predict.yaml's settings,
  as predict.py screens a folder (decode, resize, TTA, Grad-CAM overlays; the quality gate where a checkpoint has one),
  in float32 in every column (predict.py does not autocast);
- training step: a bare forward/backward/Adam step (bench/timing.py BareStep) at the recipe's training batch size.

bf16-mixed runs the forward passes (and the training step) under CPU bf16 autocast, as Lightning's precision does;
it is measured only where the CPU has bf16 instructions (lesion.runs.precision). "x training" is a stage's img/s over
the training step's, in the same process and precision; per view, multiply a TTA stage's figure by its views.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

STAGES = [
    "decode + preprocess",
    "forward, one view",
    "forward, TTA",
    "+ feature capture",
    "whole (trainer.predict)",
    "predict.py (Screener)",
    "training step",
]


def recipe(ckpt: str | None, root: str, overrides: list[str]):
    """(model, datamodule set up for test, train batch size) for the recipe (with Hydra `overrides`) or a checkpoint,
    on `root`."""
    from hydra import compose, initialize_config_dir

    from lesion.data import build_datamodule
    from lesion.models.backbones import backbone_data_config
    from lesion.models.module import LesionClassifier
    from lesion.runs.config import to_plain

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        recipe = ["experiment=isic2018_cpu_best", f"data.root={root}", "paths.output_dir=."]
        cfg = compose("train", overrides=recipe + overrides)
    config = to_plain(cfg)
    if ckpt:
        from lesion.models.loading import load_model

        model = load_model(ckpt)
        data = dict(model.hparams.data) | {"root": root}
        datamodule = build_datamodule(data, model.data_config)  # the checkpoint's own preprocessing
    else:
        datamodule = build_datamodule(config["data"], backbone_data_config(**config["backbone"]))
        model = LesionClassifier(
            backbone=config["backbone"],
            data=config["data"],
            class_names=list(datamodule.classes),
            malignant=list(datamodule.malignant),
            **config["model"] | {"channels_last": True},
        ).eval()
        data = config["data"]
    datamodule.setup("test")
    return model, datamodule, int(data["batch_size"])


def rate(fn, images: int, repeats: int = 3) -> float:
    """img/s of `fn` (which handles `images` images) over `repeats` calls after one untimed call."""
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return repeats * images / (time.perf_counter() - start)


def loader_rate(loader, images: int) -> tuple[float, dict]:
    """img/s of iterating `loader` for `images` images; and its first batch."""
    start, seen, first = time.perf_counter(), 0, None
    for batch in loader:
        first = first or batch
        seen += len(batch["label"])
        if seen >= images:
            break
    return seen / (time.perf_counter() - start), first


def screener_rate(model, datamodule, images: int) -> float:
    """img/s of predict.py's Screener, with predict.yaml's settings (Grad-CAM overlays on; the quality gate where the
    checkpoint has one), over the first `images` test images' files."""
    from hydra import compose, initialize_config_dir

    from lesion.runs.config import to_plain
    from lesion.serving.inference import Screener

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        config = to_plain(compose("predict", overrides=["ckpt_path=-", "input=-", "paths.output_dir=."]))
    config["quality"]["enabled"] &= bool(model.deployment.quality)
    screener = Screener.from_config(model, config)
    paths = datamodule.reader().paths
    files = [Path(paths[i]) for i in datamodule.frames["test"]["image_id"].astype(str)[:images]]
    start = time.perf_counter()
    answered = sum(1 for _ in screener.iter_files(files, batch_size=config["batch_size"]))
    return answered / (time.perf_counter() - start)


def measure(args: argparse.Namespace) -> dict:
    """One process's figures: {precision: {stage: img/s}} under allocator.retain_mb=args.child."""
    import lightning as L
    import torch
    from timing import BareStep

    from lesion.models.features import captured_features
    from lesion.runs.allocator import retain_freed_memory
    from lesion.runs.precision import resolve_precision
    from lesion.screening.predictions import predict

    retain_freed_memory(args.child)
    model, datamodule, train_batch = recipe(args.ckpt, args.root, args.override)
    loader = datamodule.test_dataloader()
    decode, batch = loader_rate(loader, args.images)
    x, n = batch["image"], len(batch["label"])
    figures = {}
    for asked in args.precisions:
        precision = resolve_precision(asked)
        if precision != asked:
            print(f"{asked}: this CPU has no bf16 instructions; not measured", file=sys.stderr)
            continue
        bf16 = precision == "bf16-mixed"
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
        row = {"decode + preprocess": decode}
        with torch.inference_mode(), autocast:
            row["forward, one view"] = rate(lambda: model.eval_net(x.contiguous(memory_format=torch.channels_last)), n)
            row["forward, TTA"] = rate(lambda: model(x), n)

            def captured():
                with captured_features(model) as features:
                    model(x)
                    features(1)

            row["+ feature capture"] = rate(captured, n)
        trainer = L.Trainer(
            accelerator="cpu",
            precision=precision,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_predict_batches=-(-args.images // loader.batch_size),
        )
        start = time.perf_counter()
        scored = predict(model, loader, trainer, features=True)
        row["whole (trainer.predict)"] = len(scored.image_ids) / (time.perf_counter() - start)
        # predict.py runs in float32 whatever trainer.precision says (and Grad-CAM reads float32 activations)
        row["predict.py (Screener)"] = (
            figures["32-true"]["predict.py (Screener)"]
            if bf16 and "32-true" in figures
            else screener_rate(model, datamodule, args.images)
        )
        twin = copy.deepcopy(model)
        step = BareStep(twin, bf16)
        images = torch.cat([x] * -(-train_batch // n))[:train_batch]
        labels = torch.randint(0, len(model.hparams.class_names), (train_batch,))
        row["training step"] = rate(lambda s=step, i=images, y=labels: s(i, y), train_batch, repeats=4)
        figures[precision] = row
    from lesion.models.tta import TTA_VIEWS, tta_mode

    mode = tta_mode(model.hparams.tta)
    views = len(TTA_VIEWS[mode](x[:1])) if mode else 1
    return {"retain_mb": args.child, "views": views, "figures": figures}


def table(results: list[dict]) -> str:
    """Markdown: a row per stage, a column per (allocator, precision), img/s and x the training step."""
    import pandas as pd

    from lesion.screening.reports import markdown_table

    columns = [(r["retain_mb"], p, f) for r in results for p, f in r["figures"].items()]
    header = ["stage"] + [f"retain_mb={m}, {p}" for m, p, _ in columns]
    rows = [
        [stage] + [f"{f[stage]:.1f} ({f[stage] / f['training step']:.2f}x)" for _, _, f in columns] for stage in STAGES
    ]
    return markdown_table(pd.DataFrame(rows, columns=header))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", help="a checkpoint (default: the recipe's network, built from its config)")
    parser.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "isic2018"))
    parser.add_argument("--images", type=int, default=256, help="test images the loader and trainer.predict read")
    parser.add_argument("--retain", type=int, nargs="+", default=[0, 2048], help="allocator.retain_mb settings")
    parser.add_argument("--precisions", nargs="+", default=["32-true", "bf16-mixed"])
    parser.add_argument("--override", nargs="*", default=[], help="Hydra overrides of the recipe")
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args)))
        return
    if not Path(args.root).is_dir():
        sys.exit(f"--root {args.root}: no such folder; give the ISIC 2018 images (data=isic2018's data.root)")
    results = []
    for retain in args.retain:
        command = [sys.executable, __file__, "--child", str(retain), "--root", args.root, "--images", str(args.images)]
        command += ["--precisions", *args.precisions, "--override", *args.override]
        command += ["--ckpt", args.ckpt] if args.ckpt else []
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"allocator.retain_mb={retain}: the measuring process failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"allocator.retain_mb={retain} measured", file=sys.stderr)
    if args.out:  # first: the figures outlive a failure to print them
        name = f"evaluation stage by stage, {datetime.date.today()}"
        command = "python " + " ".join(sys.argv)
        args.out.write_text(json.dumps({"name": name, "command": command, "results": results}, indent=2) + "\n")
    print(f"img/s ({results[0]['views']} TTA views; x: over the training step's img/s in the same column)")
    print(table(results))


if __name__ == "__main__":
    main()
