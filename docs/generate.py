"""python docs/generate.py [--check]: the docs pages made from data, never typed by hand: the configuration reference
(from conf/), the ablation table (docs/results/ablation/*.json) and the recorded runs (docs/results/runs/*.json).
--check: exit 1 when a committed page differs from what its data gives (tests/test_docs.py runs it)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "docs"), str(ROOT / "bench")]

import config_reference  # noqa: E402
import record_run  # noqa: E402

RESULTS = ROOT / "docs" / "results"


def records(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def ablation_page() -> str:
    return (
        "# Ablation\n\n"
        "Every lever tried on ISIC 2018 (lesion-disjoint split, seed 0 unless named), each a row rendered by\n"
        "`python docs/generate.py` from its recorded file in `docs/results/ablation/` (name, command, date,\n"
        "commit, machine, figures), including those that did not help. These runs predate `bench/record_run.py`:\n"
        "their figures were transcribed from the tables their runs were first reported in, and each file says so\n"
        "(`source`). What each run showed, in words: [What each run showed](findings.md).\n\n"
        "External = the ISIC 2017 test set (600 images from another clinic); its sensitivity and specificity are at\n"
        "the checkpoint's stored threshold. Test sensitivity and specificity are at the threshold chosen on val.\n\n"
        + record_run.ablation_table(records(RESULTS / "ablation"))
    )


def recorded_page() -> str:
    runs = records(RESULTS / "runs")
    return (
        "# Recorded runs\n\n"
        "Runs recorded with `python bench/record_run.py NAME <run dir>/metrics.json --command ...` (one file each\n"
        "in `docs/results/runs/`), rendered by `python docs/generate.py`.\n\n"
        "## Figures per set\n\n" + record_run.table(runs) + "\n"
        "## Operating points\n\n"
        + record_run.operating_point_table([r for r in runs if "operating_point/val_positives" in r["figures"]])
    )


def pages() -> dict[Path, str]:
    return {
        config_reference.OUT: config_reference.reference(),
        RESULTS / "ablation.md": ablation_page(),
        RESULTS / "recorded.md": recorded_page(),
    }


def main() -> int:
    stale = []
    for path, text in pages().items():
        if "--check" in sys.argv:
            if not path.is_file() or path.read_text() != text:
                stale.append(path.relative_to(ROOT))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(path.relative_to(ROOT))
    for path in stale:
        print(f"{path} is not what its data gives: run `python docs/generate.py` (or `make docs`) and commit it")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
