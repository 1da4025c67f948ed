"""python bench/tta_views.py CKPT [--root ../shared/data/isic2018] [--external ../shared/data/isic2017_test]
                            [--splits val test] [--resamples 1000] [--out F.json]

Which test-time augmentation (`model.tta`) ranks best, from one pass over the data: the network's logits for each
of the 8 dihedral views of every image (lesion.models.module.dihedral_views: flip TTA's 4, then the same 4 of the
transposed image) on the checkpoint's own val and test splits and, with --external, on a benign/malignant folder
from another clinic. Each mode's score is the uncalibrated P(malignant) of the mean logits over its views (one view,
flip: the first 4, dihedral: all 8), as `tta_logits` computes it; a temperature or Platt map fitted afterwards would
not change the ranking much (the framework's reports use the calibrated one). Per split: AUROC of each mode with a
stratified bootstrap 95% CI, and a paired CI of each mode minus the one with fewer views (the same image resamples for
both, so the split's shared noise cancels). Choose on val; test and external are measured, never tuned on.
Cost: 8 forward passes per image (a flip checkpoint's test pass runs 4).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))

from external import folder_cases  # noqa: E402
from own_split import DEFAULT_ROOT, own_split_datamodule  # noqa: E402

from lesion.models.tta import TTA_VIEWS, dihedral_views  # noqa: E402
from lesion.serving.inference import Screener  # noqa: E402
from lesion.stats.operating_point import bootstrap_ci  # noqa: E402
from lesion.stats.patients import paired_difference  # noqa: E402

# mode -> how many of dihedral_views' views it averages (each mode's views begin with those of the modes before it)
MODES = {"one": 1} | {mode: len(views(torch.zeros(1, 1, 2, 3))) for mode, views in TTA_VIEWS.items()}


@torch.no_grad()
def view_logits(net: torch.nn.Module, batches, total: int, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 8, classes) logits of every image of `batches` ((normalised images, malignant labels) pairs) under each
    dihedral view, and the (N,) labels."""
    logits, labels = [], []
    with tqdm(total=total, desc=desc, unit="img") as bar:
        for images, y in batches:
            logits.append(torch.stack([net(v).float() for v in dihedral_views(images)], dim=1))
            labels.append(y)
            bar.update(len(images))
    return torch.cat(logits), torch.cat(labels)


def mode_scores(model, logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """Uncalibrated P(malignant) of each mode from the per-view logits (`view_logits`)."""
    return {mode: model.scores(logits[:, :k].mean(1), temperature=False, platt=False)[1] for mode, k in MODES.items()}


def split_batches(model, datamodule, split: str):
    """(batches of (images, malignant labels), image count) of the run's own val or test split."""
    loader = {"val": datamodule.val_dataloader, "test": datamodule.test_dataloader}[split]()
    return ((batch["image"], model.is_malignant(batch["label"])) for batch in loader), len(loader.dataset)


def folder_batches(model, root: Path, batch_size: int = 32):
    """The external folder read as predict.py reads photos (the checkpoint's evaluation transforms)."""
    files, y = folder_cases(root)
    screener = Screener(model)

    def batches():
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            images = [screener.tensor(screener.read(p.read_bytes(), str(p))) for p in chunk]  # resized as predict.py
            yield torch.stack(images), y[start : start + batch_size]

    return batches(), len(files)


def split_report(model, logits: torch.Tensor, y: torch.Tensor, resamples: int) -> dict:
    scores = mode_scores(model, logits)
    report: dict = {"images": len(y), "malignant": int(y.sum())}
    for mode, p in scores.items():
        report[f"{mode}_auroc"] = float(roc_auc_score(y.numpy(), p.double().numpy()))
        report[f"{mode}_auroc_ci"] = list(bootstrap_ci(p.double(), y, 0.5, resamples)["auroc"])
    names = list(scores)
    for fewer, more in zip(names, names[1:]):
        # images resampled alike for both modes (each image its own group), so their shared noise cancels
        paired = paired_difference(scores[more].numpy(), scores[fewer].numpy(), y.numpy(), np.arange(len(y)), "auroc",
                                   resamples)  # fmt: skip
        report[f"{more}_minus_{fewer}"], report[f"{more}_minus_{fewer}_ci"] = paired["difference"], paired["ci"]
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt")
    parser.add_argument("--root", default=DEFAULT_ROOT, help="the data the checkpoint's own split is read from")
    parser.add_argument("--external", type=Path, help="a benign/malignant folder from another clinic")
    parser.add_argument("--splits", nargs="*", default=["val", "test"], choices=["val", "test"])
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    model, datamodule = own_split_datamodule(args.ckpt, args.root)
    net = model.eval_net.eval()
    sources = {split: split_batches(model, datamodule, split) for split in args.splits}
    if args.external:
        sources["external"] = folder_batches(model, args.external)
    reports = {"checkpoint": args.ckpt}
    for name, (batches, total) in sources.items():
        start = time.perf_counter()
        logits, y = view_logits(net, batches, total, name)
        seconds = time.perf_counter() - start
        reports[name] = split_report(model, logits, y, args.resamples)
        reports[name]["views_per_second"] = round(8 * total / seconds, 1)
    modes = list(MODES)
    header = [f"{m} ({MODES[m]} view{'s' * (MODES[m] > 1)})" for m in modes]
    header += [f"{b} - {a} (paired CI)" for a, b in zip(modes, modes[1:])]
    print("| split | " + " | ".join(header) + " | views/s |")
    print("|---" * (len(header) + 2) + "|")
    for name in sources:
        r = reports[name]
        cells = [f"{r[f'{m}_auroc']:.3f} ({r[f'{m}_auroc_ci'][0]:.3f}-{r[f'{m}_auroc_ci'][1]:.3f})" for m in modes]
        for a, b in zip(modes, modes[1:]):
            low, high = r[f"{b}_minus_{a}_ci"]
            cells.append(f"{r[f'{b}_minus_{a}']:+.4f} ({low:+.4f} to {high:+.4f})")
        print(f"| {name} ({r['images']} images) | " + " | ".join(cells) + f" | {r['views_per_second']} |")
    if args.out:
        args.out.write_text(json.dumps(reports, indent=2))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
