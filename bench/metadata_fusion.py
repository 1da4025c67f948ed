"""python bench/metadata_fusion.py CKPT [CKPT ...] [--root ../shared/data/isic2018] [--resamples 1000] [--out F.json]

Does what a clinic knows of the patient (age, sex, body site: HAM10000_metadata.csv) add to the image's screening
score? For each checkpoint, on the lesion-disjoint split of the run that trained it:
- a metadata prior: logistic regression of malignant vs benign on the train split's metadata alone (age and age², an
  unknown-age flag, sex, one-hot body site; no image);
- a fusion: logistic regression on the val split of [logit of the image's calibrated P(malignant), the prior's
  logit] (two weights and a bias, fitted where the operating point is fitted);
- test AUROC (stratified bootstrap 95% CI) of the image score, the prior alone and the fusion, and a paired bootstrap
  CI of fusion minus image (the same resamples for both, so the shared noise of the split cancels).
The image score is unchanged by the fusion where metadata is missing; this measures the gain where it is present.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))

from own_split import DEFAULT_ROOT, own_split_predictions  # noqa: E402

from lesion.stats.operating_point import bootstrap_ci  # noqa: E402

COLUMNS = ("age", "sex", "localization")


def metadata_features(frame: pd.DataFrame, sites: list[str]) -> np.ndarray:
    """Age in decades and its square, an unknown-age flag, sex (male, female; else neither), one-hot body site
    (`sites`, the train split's; an unseen site is all zeros)."""
    age = pd.to_numeric(frame["age"], errors="coerce").to_numpy(float)
    unknown = np.isnan(age)
    decades = np.where(unknown, 5.0, age / 10)
    columns = [decades, decades**2 / 10, unknown.astype(float)]
    columns += [(frame["sex"] == s).to_numpy(float) for s in ("male", "female")]
    columns += [(frame["localization"] == s).to_numpy(float) for s in sites]
    return np.stack(columns, axis=1)


def split_metadata(datamodule, split: str, image_ids: list[str]) -> pd.DataFrame:
    frame = datamodule.frames[split]
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"the {split} split has no {missing} columns: --root must hold HAM10000_metadata.csv "
            "(lesion_id,image_id,dx,dx_type,age,sex,localization) beside the ISIC 2018 layout"
        )
    return frame.set_index("image_id").loc[image_ids, list(COLUMNS)].reset_index()


def paired_auroc_difference(y: np.ndarray, a: np.ndarray, b: np.ndarray, resamples: int, seed: int = 0):
    """Mean and 95% CI of AUROC(a) - AUROC(b) over stratified bootstrap resamples shared by both scores."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    diffs = []
    for _ in range(resamples):
        i = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        diffs.append(roc_auc_score(y[i], a[i]) - roc_auc_score(y[i], b[i]))
    return float(np.mean(diffs)), np.percentile(diffs, [2.5, 97.5]).tolist()


def fusion_report(ckpt: str, root: str, resamples: int) -> dict:
    model, datamodule, predictions = own_split_predictions(ckpt, root)
    train = datamodule.frames["train"]
    meta_train = split_metadata(datamodule, "train", train["image_id"].tolist())
    sites = sorted(meta_train["localization"].dropna().astype(str).unique())
    y_train = model.is_malignant(torch.tensor(train["label"].to_numpy(int))).numpy()
    prior = LogisticRegression(C=1.0, max_iter=5000).fit(metadata_features(meta_train, sites), y_train)
    scores = {}
    for split in ("val", "test"):
        preds = predictions[split]
        p = preds.p_malignant(model).double().clamp(1e-6, 1 - 1e-6).numpy()
        meta = split_metadata(datamodule, split, preds.image_ids)
        prior_logit = prior.decision_function(metadata_features(meta, sites))
        scores[split] = (preds.y_malignant.numpy(), np.log(p / (1 - p)), prior_logit)
    y_val, image_val, prior_val = scores["val"]
    fusion = LogisticRegression(C=1e6, max_iter=5000).fit(np.stack([image_val, prior_val], 1), y_val)
    y, image, prior_test = scores["test"]
    fused_val = fusion.decision_function(np.stack([image_val, prior_val], 1))
    fused = fusion.decision_function(np.stack([image, prior_test], 1))
    report = {"checkpoint": str(ckpt), "val_images": len(y_val), "test_images": len(y)}
    report["fusion_weights"] = {"image": float(fusion.coef_[0, 0]), "prior": float(fusion.coef_[0, 1])}
    named = {"image": (image_val, image), "prior": (prior_val, prior_test), "fused": (fused_val, fused)}
    for name, (val_score, score) in named.items():
        report[f"val/{name}_auroc"] = float(roc_auc_score(y_val, val_score))
        report[f"test/{name}_auroc"] = float(roc_auc_score(y, score))
        ci = bootstrap_ci(torch.from_numpy(score), torch.from_numpy(y), 0.0, resamples)["auroc"]
        report[f"test/{name}_auroc_ci"] = list(ci)
    mean, ci = paired_auroc_difference(y, fused, image, resamples)
    report |= {"test/fused_minus_image": mean, "test/fused_minus_image_ci": ci}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpts", nargs="+")
    parser.add_argument("--root", default=DEFAULT_ROOT)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    reports = [fusion_report(ckpt, args.root, args.resamples) for ckpt in args.ckpts]
    header = ["checkpoint", "test AUROC: image (CI)", "metadata prior alone", "image + metadata (CI)"]
    print("| " + " | ".join(header + ["fused - image (paired CI)"]) + " |")
    print("|---|---|---|---|---|")
    for r in reports:
        cells = [r["checkpoint"]]
        for name in ("image", "prior", "fused"):
            low, high = r[f"test/{name}_auroc_ci"]
            cells.append(f"{r[f'test/{name}_auroc']:.4f} ({low:.3f}-{high:.3f})")
        low, high = r["test/fused_minus_image_ci"]
        cells.append(f"{r['test/fused_minus_image']:+.4f} ({low:+.4f} to {high:+.4f})")
        print("| " + " | ".join(cells) + " |")
    if args.out:
        args.out.write_text(json.dumps(reports, indent=2))


if __name__ == "__main__":
    main()
