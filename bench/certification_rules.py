"""Which rule certifies the threshold best on real runs? For each run dir (train.py wrote its predictions.csv and
metrics.json), the threshold for the run's target sensitivity chosen three ways on the same model's scores, and what
each then does on the test split:

- `val, uncorrected`: the lower bound at the level asked, on the val split that also chose the epoch (the rule before
  the promise was kept by default);
- `val, corrected for K epochs`: the same split at 1 - (1 - confidence) / K (Bonferroni; what a run without a
  calibration split does now);
- `calibration split`: the run's separate calibration split at the level asked (data.calibration_fraction; the
  recipe's default now), when the run carved one.

    python bench/certification_rules.py /work/runs/recipe_s1 /work/runs/recipe_nocal_s1 \
        --out docs/results/certification_rules
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lesion.stats.metrics import screening_metrics  # noqa: E402
from lesion.stats.operating_point import bootstrap_ci, choose_operating_point  # noqa: E402


def rules(run: Path, resamples: int) -> list[dict]:
    """One row per rule the run's predictions allow, with the test figures at its threshold."""
    metrics = json.loads((run / "metrics.json").read_text())
    table = pd.read_csv(run / "predictions.csv")
    target = metrics["target_sensitivity"]
    asked = metrics.get("operating_point/confidence_asked", metrics["operating_point/confidence"])
    compared = int(metrics.get("operating_point/checkpoints_compared") or metrics.get("epochs") or 1)
    compared = max(compared, int(metrics.get("epochs") or 1))  # the epochs val chose among, whichever split certified

    def scores(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        part = table[table["split"] == split]
        return torch.tensor(part["p_malignant"].to_numpy()), torch.tensor(part["malignant"].to_numpy())

    candidates = [("val, uncorrected", "val", asked), (f"val, corrected for {compared} epochs", "val", None)]
    if (table["split"] == "calibration").any():
        candidates.append(("calibration split", "calibration", asked))
    p_test, y_test = scores("test")
    rows = []
    for name, split, confidence in candidates:
        confidence = confidence if confidence is not None else 1 - (1 - asked) / compared
        p, y = scores(split)
        chosen = choose_operating_point(p, y, target, "lower_bound", confidence)
        at = screening_metrics(p_test.float(), y_test, chosen["threshold"])
        ci = bootstrap_ci(p_test.float(), y_test, chosen["threshold"], resamples)
        rows.append(
            {
                "run": str(run),
                "rule": name,
                "split": split,
                "confidence": confidence,
                "target": target,
                "positives": chosen["val_positives"],
                "detected": chosen["val_detected"],
                "threshold": chosen["threshold"],
                "test_images": len(y_test),
                "test_auroc": at["auroc"],
                "test_auroc_ci": list(ci["auroc"]),
                "test_recall": at["recall"],
                "test_recall_ci": list(ci["recall"]),
                "test_specificity": at["specificity"],
                "test_specificity_ci": list(ci["specificity"]),
                "referred": float((p_test > chosen["threshold"]).double().mean()),
            }  # fmt: skip
        )
    return rows


def markdown(rows: list[dict], names: dict[str, str]) -> str:
    lines = [
        "| run | rule | certified on (malignant, detected) | level | threshold | test sensitivity (CI) "
        "| test specificity (CI) | referred | test AUROC (CI) |",
        "|---|---|---|---:|---:|---|---|---:|---|",
    ]
    for r in rows:
        sens, spec, auc = (f"{r[k]:.3f} ({r[k + '_ci'][0]:.3f}-{r[k + '_ci'][1]:.3f})" for k in
                           ("test_recall", "test_specificity", "test_auroc"))  # fmt: skip
        lines.append(
            f"| {names.get(r['run'], r['run'])} | {r['rule']} | {r['split']} ({r['positives']}, {r['detected']}) | "
            f"{r['confidence']:.4f} | {r['threshold']:.4f} | {sens} | {spec} | {r['referred']:.3f} | {auc} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="train.py run dirs (predictions.csv and metrics.json)")
    parser.add_argument("--names", nargs="*", default=[], help="a name per run (its command and date)")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--out", default=None, help="write <out>.json (the rows) and <out>.md (the table)")
    args = parser.parse_args()
    rows = [row for run in args.runs for row in rules(Path(run), args.resamples)]
    names = dict(zip(map(str, map(Path, args.runs)), args.names))
    text = markdown(rows, names)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        command = "python bench/certification_rules.py " + " ".join(args.runs)
        name = "the threshold certified three ways on the same models"
        record = {"name": name, "command": command, "date": date.today().isoformat(), "names": names, "rows": rows}
        out.with_suffix(".json").write_text(json.dumps(record, indent=2))
        out.with_suffix(".md").write_text(f"# The threshold certified three ways on the same models\n\n{text}")


if __name__ == "__main__":
    main()
