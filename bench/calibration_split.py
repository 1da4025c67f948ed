"""How much does choosing the epoch on the split that certifies the threshold erode the lower bound's promise?

A simulation with a known truth. Each of `--epochs` checkpoints scores an image `mu * malignant + sqrt(rho) * z +
sqrt(1 - rho) * e`: `z` is the image's own difficulty, shared by every checkpoint, `e` the checkpoint's own noise,
so every checkpoint is equally good (scores N(mu, 1) for malignant images, N(0, 1) for benign ones) and picking the
best val AUROC picks noise. The lower-bound rule (`choose_operating_point`, target `--target` at `--confidence`) is
fitted on the positives of:

- `same split`: the val split that chose the epoch (what training does with data.calibration_fraction=0);
- `corrected`: the same val split, certified at 1 - (1 - confidence) / checkpoints compared (Bonferroni over the
  checkpoints: what training does when it carved no calibration split, `operating_point.correct_for_selection`);
- `separate split`: a calibration split, `--calibration-ratio` times the val split's size, that played no part in
  the choice (data.calibration_fraction > 0; the recipe's 10% split holds 0.66 times the images of its 15% val).

The true sensitivity at the chosen threshold is 1 - Phi(threshold - mu); the promise is that it reaches the target
in at least `--confidence` of trials. The table gives the share of trials in which it did, and the mean true
sensitivity and specificity (1 - Phi(threshold) of the benign N(0, 1)) each way: a promise kept by a lower threshold
costs specificity.

    python bench/calibration_split.py                      # the table in docs/results/calibration_split.md
    python bench/calibration_split.py --trials 200 --out /tmp/x
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import norm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lesion.stats.operating_point import choose_operating_point  # noqa: E402


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Mann-Whitney AUROC of positive against negative scores (continuous: no ties)."""
    ranks = np.concatenate([pos, neg]).argsort().argsort() + 1
    return (ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def scores(rng: np.random.Generator, n: int, epochs: int, rho: float, mu: float) -> np.ndarray:
    """(epochs, n) scores of n images of one class whose mean is mu, every checkpoint N(mu, 1)."""
    shared = rng.standard_normal(n)
    return mu + np.sqrt(rho) * shared + np.sqrt(1 - rho) * rng.standard_normal((epochs, n))


def threshold(pos: np.ndarray, neg: np.ndarray, target: float, confidence: float) -> float:
    p = torch.tensor(np.concatenate([pos, neg]), dtype=torch.float64)
    y = torch.tensor([1] * len(pos) + [0] * len(neg))
    return choose_operating_point(p, y, target, "lower_bound", confidence)["threshold"]


def trial(rng, positives, negatives, epochs, rho, mu, target, confidence, ratio):  # noqa: PLR0913
    val_pos, val_neg = scores(rng, positives, epochs, rho, mu), scores(rng, negatives, epochs, rho, 0.0)
    best = int(np.argmax([auroc(val_pos[e], val_neg[e]) for e in range(epochs)]))
    same = threshold(val_pos[best], val_neg[best], target, confidence)
    corrected = threshold(val_pos[best], val_neg[best], target, 1 - (1 - confidence) / epochs)
    n_pos, n_neg = round(positives * ratio), round(negatives * ratio)
    cal_pos, cal_neg = scores(rng, n_pos, 1, rho, mu)[0], scores(rng, n_neg, 1, rho, 0.0)[0]
    separate = threshold(cal_pos, cal_neg, target, confidence)
    chosen = (same, corrected, separate)
    return [1 - norm.cdf(t - mu) for t in chosen] + [norm.cdf(t) for t in chosen]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--positives", type=int, nargs="+", default=[40, 150])
    parser.add_argument("--negatives", type=int, default=400)
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 4, 12])
    parser.add_argument("--rho", type=float, nargs="+", default=[0.5, 0.9])
    parser.add_argument("--mu", type=float, default=1.8, help="malignant mean: AUROC Phi(mu / sqrt(2)), 0.90 at 1.8")
    parser.add_argument("--target", type=float, default=0.85)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--calibration-ratio", type=float, default=1.0, help="calibration / val split size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/results/calibration_split")
    args = parser.parse_args()
    lines = [
        f"# Does choosing the epoch on the certifying split erode the lower bound? ({args.trials} trials a row)",
        "",
        f"`python bench/calibration_split.py --trials {args.trials} --calibration-ratio {args.calibration_ratio}`"
        f" (positives {' '.join(map(str, args.positives))}): target sensitivity {args.target} certified at "
        f"{args.confidence:.0%}; {args.negatives} benign val images; every checkpoint equally good (AUROC "
        f"{norm.cdf(args.mu / np.sqrt(2)):.3f}), so the val AUROC that picks one picks noise. rho: how much of a "
        "score is the image's own (shared by every checkpoint) rather than the checkpoint's. Coverage: the share of "
        f"trials whose true sensitivity at the threshold reached {args.target} (promised: >= {args.confidence:.0%}). "
        "Same: certified on the val split that chose the checkpoint; corrected: the same at 1 - (1 - confidence) / "
        f"checkpoints; separate: on a calibration split {args.calibration_ratio:g} times val's size.",
        "",
        "| malignant val images | checkpoints compared | rho | coverage: same / corrected / separate "
        "| mean true sensitivity: same / corrected / separate | mean true specificity: same / corrected / separate |",
        "|---:|---:|---:|---|---|---|",
    ]
    rng = np.random.default_rng(args.seed)
    ratio = args.calibration_ratio
    grid = itertools.product(args.positives, args.epochs, args.rho)
    for positives, epochs, rho in grid:
        if epochs == 1 and rho != args.rho[0]:
            continue  # one checkpoint: nothing is chosen, rho does not matter
        runs = np.array(
            [
                trial(rng, positives, args.negatives, epochs, rho, args.mu, args.target, args.confidence, ratio)
                for _ in range(args.trials)
            ]
        )
        covered = (runs[:, :3] >= args.target).mean(0)
        rho_text = f"{rho:.2f}" if epochs > 1 else "-"
        means = runs.mean(0)
        lines.append(
            f"| {positives} | {epochs} | {rho_text} | {' / '.join(f'{c:.3f}' for c in covered)} | "
            f"{' / '.join(f'{m:.3f}' for m in means[:3])} | {' / '.join(f'{m:.3f}' for m in means[3:])} |"
        )
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    out = Path(args.out).with_suffix(".md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
