"""python bench/ablation_table.py outputs/ablation [ROW ...]: the ablation rows (metrics.json, external.json, wall time)
as one markdown table, in the order given (default: every finished row, by name)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

COLUMNS = (
    "row | val AUROC | test AUROC (95% CI) | test bal. acc. (7 cl.) | test sens. at val thr. (CI) | "
    "test spec. at val thr. (CI) | external AUROC (CI) | external sens. / spec. at stored thr. | train min | img/s"
)


def ci(values) -> str:
    return f"{values[0]:.3f}-{values[1]:.3f}"


def row(run: Path) -> str:
    m = json.loads((run / "metrics.json").read_text())
    ext_file = run / "external.json"
    ext = json.loads(ext_file.read_text()) if ext_file.is_file() else None
    log = run.with_suffix(".log")
    wall = re.findall(r"([\d.]+) s wall", log.read_text()) if log.is_file() else []
    minutes = f"{float(wall[-1]) / 60:.1f}" if wall else f"{m['fit_seconds'] / 60:.1f} (fit)"
    external = (
        [f"{ext['auroc']:.3f} ({ci(ext['auroc_ci'])})", f"{ext['sensitivity']:.3f} / {ext['specificity']:.3f}"]
        if ext
        else ["", ""]
    )
    cells = [
        run.name,
        f"{m['best_val_score']:.3f}",
        f"{m['test_op/auroc']:.3f} ({ci(m['test_op/auroc_ci'])})",
        f"{m.get('test/balanced_accuracy', float('nan')):.3f}",
        f"{m['test_op/recall']:.3f} ({ci(m['test_op/recall_ci'])})",
        f"{m['test_op/specificity']:.3f} ({ci(m['test_op/specificity_ci'])})",
        *external,
        minutes,
        f"{m['train_img_per_s']:.1f}",
    ]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/ablation")
    names = sys.argv[2:]
    runs = [root / n for n in names] if names else sorted(root.iterdir())
    runs = [p for p in runs if (p / "metrics.json").is_file()]
    if not runs:
        raise SystemExit(f"no finished rows (metrics.json) under {root}")
    print(f"| {COLUMNS} |")
    print("|" + "---|" * len(COLUMNS.split("|")))
    for run in runs:
        print(row(run))


if __name__ == "__main__":
    main()
