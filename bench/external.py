"""python bench/external.py CKPT [--root ../shared/data/isic2017_test] [--model-tta dihedral] [--out external.json]

External validation of a checkpoint on a benign/malignant folder from another clinic (ISIC 2017 test set): AUROC and
pAUC80 of calibrated P(malignant), and sensitivity/specificity at the checkpoint's stored threshold, each with a
stratified bootstrap 95% CI. Preprocessing, temperature and threshold are the checkpoint's own
(lesion.serving.inference), so this is what a deployed model would score there. Measure with it; never tune on it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lesion.models.loading import load_model
from lesion.models.tta import tta_mode
from lesion.serving.inference import Screener
from lesion.stats.metrics import screening_metrics
from lesion.stats.operating_point import bootstrap_ci

SUFFIXES = {".jpg", ".jpeg", ".png"}


def folder_cases(root: Path) -> tuple[list[Path], torch.Tensor]:
    files, labels = [], []
    for label, name in enumerate(("benign", "malignant")):
        folder = root / name
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is missing: --root needs benign/ and malignant/ subfolders")
        found = sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)
        files += found
        labels += [label] * len(found)
    return files, torch.tensor(labels)


def external_report(ckpt: Path, root: Path, resamples: int = 1000, model_tta: str | None = None) -> dict:
    """model_tta: measure under another TTA than the checkpoint's own (false, flip, dihedral). Its AUROC is then that
    TTA's; the stored threshold was fitted under the checkpoint's own, so the sensitivity and specificity at it are
    only indicative (eval.py ckpt_path=... tta=... calibrates one)."""
    model = load_model(ckpt)
    if model_tta is not None:
        model.hparams.tta = tta_mode(model_tta, key="--model-tta") or False
    files, y = folder_cases(root)
    screener = Screener(model)
    with tqdm(total=len(files), desc=f"external {root.name}", unit="img") as bar:
        results = screener.screen_files(files, batch_size=32, progress=bar)
    errors = [r for r in results if r.error]
    if errors:
        raise ValueError(f"{len(errors)} unreadable images, first: {errors[0].error}")
    p = torch.tensor([r.p_malignant for r in results])
    threshold = float(model.deployment.threshold)
    at = screening_metrics(p, y, threshold)
    ci = bootstrap_ci(p, y, threshold, resamples)
    return {
        "checkpoint": str(ckpt),
        "root": str(root),
        "model_tta": screener.tta or False,
        "images": len(files),
        "malignant": int(y.sum()),
        "threshold": threshold,
        "auroc": at["auroc"],
        "auroc_ci": ci["auroc"],
        "pauc80": at["pauc80"],
        "pauc80_ci": ci["pauc80"],
        "sensitivity": at["recall"],
        "sensitivity_ci": ci["recall"],
        "specificity": at["specificity"],
        "specificity_ci": ci["specificity"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", type=Path)
    parser.add_argument("--root", type=Path, default=Path("../shared/data/isic2017_test"))
    parser.add_argument(
        "--model-tta", choices=("false", "flip", "dihedral"), default=None, help="measure under another model.tta"
    )
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model_tta = {"false": False}.get(args.model_tta, args.model_tta)
    report = external_report(args.ckpt, args.root, args.resamples, model_tta)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    r = report
    print(
        f"external {r['root']} ({r['images']} images, {r['malignant']} malignant): "
        f"AUROC {r['auroc']:.3f} ({r['auroc_ci'][0]:.3f}-{r['auroc_ci'][1]:.3f}), pAUC80 {r['pauc80']:.3f}; "
        f"at the stored threshold {r['threshold']:.3f}: sensitivity {r['sensitivity']:.3f} "
        f"({r['sensitivity_ci'][0]:.3f}-{r['sensitivity_ci'][1]:.3f}), specificity {r['specificity']:.3f} "
        f"({r['specificity_ci'][0]:.3f}-{r['specificity_ci'][1]:.3f})"
    )


if __name__ == "__main__":
    main()
