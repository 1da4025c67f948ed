"""python bench/calibrators.py CKPT [--root ../shared/data/isic2018] [--bins 15]

Which calibrator suits the screening score P(malignant) = the malignant classes' softmax sum: on the checkpoint's own
val split, fit (a) temperature scaling of the multiclass logits (what train.py and eval.py do), (b) a binary
temperature (the T minimising the binary NLL of P(malignant)), (c) Platt scaling of logit(P(malignant)) (a, b by
logistic regression), (d) the multiclass temperature then Platt scaling (`operating_point.calibrator=platt`, what
train.py and eval.py store); report NLL, Brier and ECE of P(malignant) on val (where a choice would be made) and on
test, and test AUROC (Platt is monotone, so it keeps the ranking it maps; a temperature can change a sum's ranking).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from own_split import DEFAULT_ROOT, own_split_predictions  # noqa: E402

from lesion.screening.recalibration import fit_binary_temperature  # noqa: E402
from lesion.stats.calibration import binary_calibration_scores, fit_platt, fit_temperature, platt_scale  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt")
    parser.add_argument("--root", default=DEFAULT_ROOT)
    parser.add_argument("--bins", type=int, default=15)
    args = parser.parse_args()
    model, _, predictions = own_split_predictions(args.ckpt, args.root)
    val, test = predictions["val"], predictions["test"]
    mask = model.malignant_mask

    def p_of(logits: torch.Tensor, t: float) -> torch.Tensor:
        return (logits.double() / t).softmax(-1)[:, mask].sum(-1)

    multiclass_t = fit_temperature(val.logits, val.labels)
    binary_t = fit_binary_temperature(val.logits, mask, val.y_malignant)
    platt_1 = fit_platt(p_of(val.logits, 1.0), val.y_malignant)
    platt_t = fit_platt(p_of(val.logits, multiclass_t), val.y_malignant)
    calibrators = {
        "none (T = 1)": lambda logits: p_of(logits, 1.0),
        f"multiclass temperature (T = {multiclass_t:.3f})": lambda logits: p_of(logits, multiclass_t),
        f"binary temperature (T = {binary_t:.3f})": lambda logits: p_of(logits, binary_t),
        f"Platt (a = {platt_1[0]:.3f}, b = {platt_1[1]:.3f})": lambda logits: platt_scale(p_of(logits, 1.0), platt_1),
        f"multiclass temperature, then Platt (a = {platt_t[0]:.3f}, b = {platt_t[1]:.3f}; calibrator=platt)": (
            lambda logits: platt_scale(p_of(logits, multiclass_t), platt_t)
        ),
    }
    print(f"{Path(args.ckpt).name}: val {len(val.image_ids)} images, test {len(test.image_ids)}")
    print("| calibrator | val NLL | val Brier | val ECE | test NLL | test Brier | test ECE | test AUROC |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, calibrate in calibrators.items():
        cells = []
        for preds in (val, test):
            scores = binary_calibration_scores(calibrate(preds.logits), preds.y_malignant, args.bins)
            cells += [f"{scores['nll']:.4f}", f"{scores['brier']:.4f}", f"{scores['ece']:.4f}"]
        auroc = roc_auc_score(test.y_malignant.numpy(), np.asarray(calibrate(test.logits)))
        print(f"| {name} | " + " | ".join(cells) + f" | {auroc:.4f} |")


if __name__ == "__main__":
    main()
