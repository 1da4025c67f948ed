"""python bench/calibrators.py CKPT [--out calibrators.json]

Is temperature scaling of the class logits the right calibrator for P(malignant), a sum of softmaxes? Fits on the
checkpoint's val split (its training run's own split) and scores on its test split:
- temperature: softmax(logits / T) summed over the malignant classes, T by multiclass NLL (what the framework does);
- platt: sigmoid(a * logit(P(malignant) at T = 1) + b), a and b by binary NLL of P(malignant) (Platt 1999);
- none: P(malignant) at T = 1.
Prints binary NLL, Brier, ECE and AUROC of P(malignant) for each, val and test.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from lesion.calibration import binary_calibration_scores, fit_temperature
from lesion.data import build_datamodule
from lesion.evaluation import predict, training_splits
from lesion.inference import load_model
from lesion.metrics import screening_metrics


def fit_platt(p: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """a, b minimising the binary NLL of sigmoid(a * logit(p) + b)."""
    z = torch.logit(p.double().clamp(1e-7, 1 - 1e-7))
    ab = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([ab], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(ab[0] * z + ab[1], y.double())
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(ab[0]), float(ab[1])


def compare(ckpt: str, out: Path) -> dict:
    model = load_model(ckpt)
    out.mkdir(parents=True, exist_ok=True)
    data = dict(model.hparams.data)
    splits = training_splits(model, ckpt)
    if splits:
        data["split_file"] = str(out / "splits.csv")
        splits[0].to_csv(data["split_file"], index=False)
    datamodule = build_datamodule(data, model.data_config)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=True, default_root_dir=str(out))
    val = predict(model, datamodule.val_dataloader(), trainer)
    test = predict(model, datamodule.test_dataloader(), trainer)
    temperature = fit_temperature(val.logits, val.labels)
    a, b = fit_platt(val.p_malignant(model, 1.0), val.y_malignant)

    def calibrated(split) -> dict[str, torch.Tensor]:
        raw = split.p_malignant(model, 1.0).double().clamp(1e-7, 1 - 1e-7)
        return {
            "none": raw,
            "temperature": split.p_malignant(model, temperature).double(),
            "platt": torch.sigmoid(a * torch.logit(raw) + b),
        }

    results: dict = {"checkpoint": str(ckpt), "temperature": temperature, "platt": [a, b]}
    for name, split in (("val", val), ("test", test)):
        for method, p in calibrated(split).items():
            scores = binary_calibration_scores(p, split.y_malignant)
            scores["auroc"] = screening_metrics(p.float(), split.y_malignant)["auroc"]
            results[f"{name}/{method}"] = scores
            print(f"{name:4s} {method:11s} " + "  ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/calibrators"))
    args = parser.parse_args()
    results = compare(args.ckpt, args.out)
    (args.out / "calibrators.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
