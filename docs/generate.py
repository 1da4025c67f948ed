"""python docs/generate.py [--check]: the docs pages made from data, never typed by hand: the configuration reference
(from conf/), the ablation table (docs/results/ablation/*.json) and the recorded runs (docs/results/runs/*.json).
--check: exit 1 when a committed page differs from what its data gives (tests/test_docs.py runs it)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "docs"), str(ROOT / "bench")]

import certification_rules  # noqa: E402
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
    # runs that fitted their operating point (an eval.py record of a calibrated checkpoint repeats its run's)
    fitted = [r for r in runs if "val_op/recall" in r["figures"]]
    return (
        "# Recorded runs\n\n"
        "Runs recorded with `python bench/record_run.py NAME <run dir>/metrics.json --command ...` (one file each\n"
        "in `docs/results/runs/`), rendered by `python docs/generate.py`.\n\n"
        "## Figures per set\n\n" + record_run.table(runs) + "\n"
        "## Operating points\n\n" + record_run.operating_point_table(fitted)
    )


# The README's one results table: the study's final model, the baseline and the recipe (with its external set).
HEADLINE = [
    ("the_study_s_final_model_resnet50_trunc_cpu_protocol", None),
    ("the_baseline", None),
    ("the_recipe_isic_2018_only_seed_0", "the_recipe_isic_2018_only_seed_0_on_isic_2017_test"),
]
README_START, README_END = "<!-- results table: python docs/generate.py -->", "<!-- end of results table -->"


def headline_table() -> str:
    head = "| run (command, date) | test AUROC (95% CI) | sensitivity (CI) | specificity (CI) | ISIC 2017 AUROC (CI) |"
    lines = [head, "|---|---|---|---|---|"]
    for name, external in HEADLINE:
        r = json.loads((RESULTS / "runs" / f"{name}.json").read_text())
        f = r["figures"]
        ext = json.loads((RESULTS / "runs" / f"{external}.json").read_text())["figures"] if external else {}
        row = [record_run.cell(f, k) for k in ("test/auroc", "test_op/recall", "test_op/specificity")]
        row.append(record_run.cell(ext, "test/auroc") if ext else "not measured")
        lines.append(f"| {r['name']}: `{r['command']}` ({r['date']}) | {' | '.join(row)} |")
    return "\n".join(lines) + "\n"


def readme() -> str:
    """README.md with its results table rendered anew between the markers."""
    text = (ROOT / "README.md").read_text()
    start, end = text.index(README_START) + len(README_START), text.index(README_END)
    return text[:start] + "\n" + headline_table() + text[end:]


def memory_page() -> str:
    """app.py and predict.py resident memory, before and after bounding it (docs/results/memory/*.json)."""
    runs = records(RESULTS / "memory")
    app = ["| run (command, commit, date) | requests | idle MB | start MB | peak MB | end MB | slope MB / 100 (one "
           "client / max_queue + 1) | seconds |", "|---|---:|---:|---:|---:|---:|---|---:|"]  # fmt: skip
    predict = ["| run (command, commit, date) | photos | start MB | peak MB | end MB | slope MB / 100 photos | "
               "seconds |", "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in sorted(runs, key=lambda r: (r["kind"], "before" not in r["name"])):  # before, then after
        f, run = r["figures"], f"{r['name']}: `{r['command']}` ({r['commit'] or 'this change'}, {r['date']})"
        if r["kind"] == "app":
            slopes = f"{f['sequential_slope_mb_per_100']:+.1f} / {f['concurrent_slope_mb_per_100']:+.1f}"
            app.append(f"| {run} | {f['requests']} | {f['idle_mb']} | {f['start_mb']} | {f['peak_mb']} | "
                       f"{f['end_mb']} | {slopes} | {f['seconds']} |")  # fmt: skip
        else:
            predict.append(f"| {run} | {f['photos']} | {f['start_mb']} | {f['peak_mb']} | {f['end_mb']} | "
                           f"{f['slope_mb_per_100']:+.1f} | {f['seconds']} |")  # fmt: skip
    return (
        "# Memory of the web page and predict.py\n\n"
        "Resident memory (VmRSS) of `python app.py` and `python predict.py` as their own processes, with the recipe's\n"
        "checkpoint (EfficientNet-Lite0 at 225x300, flip TTA, Grad-CAM on, quality gate on), rendered by\n"
        "`python docs/generate.py` from `docs/results/memory/*.json`. Photos: 0.3 to 12 megapixels, JPEG, PNG and\n"
        "WebP (`bench/app_memory.py`); the 12-megapixel PNG (21 MB) is over `max_upload_mb` and answered 413,\n"
        "the synthetic 9-12 megapixel photos are refused by the quality gate (retake, no Grad-CAM), and 60% get a\n"
        "probability. About 0.4 GB of each figure is mapped library code (torch, Lightning); the page's private\n"
        "heap (RssAnon) was 654 MB idle and 703 MB after the 1,000 requests.\n\n"
        "## app.py\n\n" + "\n".join(app) + "\n\n![RSS over 1,000 requests](app_memory.png)\n\n"
        "Before (200 requests):\n\n![RSS before](app_memory_before.png)\n\n"
        "## predict.py over a folder\n\n" + "\n".join(predict) + "\n\n![predict.py RSS](predict_memory.png)\n"
    )


def _ci(f: dict, key: str) -> str:
    ci = f.get(f"{key}_ci")
    return f"{f[key]:.4f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "") if key in f else "-"


VARIANT_HEAD = ("| variant | oof pAUC80 (CI) | oof AUROC (CI) | oof top-15 sensitivity (CI) | test pAUC80 (CI) | "
                "test AUROC (CI) |\n|---|---|---|---|---|---|")  # fmt: skip


def _variant_rows(rows: list[dict]) -> list[str]:
    lines = []
    for row in rows:
        cells = [_ci(row, k) for k in ("oof/pauc80", "oof/auroc", "oof/top15_sensitivity", "test/pauc80", "test/auroc")]
        lines.append(f"| {row['variant']} | {' | '.join(cells)} |")
    return lines


def stack_page() -> str:
    """The tabular stack's recorded runs (docs/results/stack/*.json): scale, the ablation, the ISIC 2018 gain."""
    runs = records(RESULTS / "stack")
    scale = ["| run (command, commit, date) | lesions | features | ablation rows fitted | seconds | peak RSS MB |",
             "|---|---:|---:|---|---:|---:|"]  # fmt: skip
    variants, end_to_end = [], []
    gain = ["| checkpoint | test AUROC: image (CI) | metadata trees alone | stack: image + metadata | stack - image "
            "(paired CI) |", "|---|---|---|---|---|"]  # fmt: skip
    for r in runs:
        f, run = r["figures"], f"{r['name']}: `{r['command']}` ({r['commit'] or 'this change'}, {r['date']})"
        if r["kind"] == "scale":
            scale.append(f"| {run} | {f['rows']:,} | {f['features']} | {'yes' if f['ablation'] else 'no'} | "
                         f"{f['seconds']:.0f} | {f['peak_rss_mb']:,} |")  # fmt: skip
            variants += _variant_rows(f.get("ablation_rows", []))
        elif r["kind"] == "end_to_end":
            end_to_end.append(f"{run}: {f['lesions']:,} lesions of {f['patients']} patients, {f['positives']} "
                              f"malignant; the fold sweep {f['sweep_seconds'] / 60:.0f} min, the stack and its "
                              f"ablation {f['stack_seconds']:.0f} s. The image models' out-of-fold AUROC "
                              f"{f['image_oof_auroc']:.3f}, against {f['planted_image_signal_auroc']:.3f} for the "
                              "planted image signal itself (a perfect reader of the crops).\n")  # fmt: skip
            end_to_end += [VARIANT_HEAD, *_variant_rows(f["ablation_rows"]), ""]
        else:
            low, high = f["test/stacked_minus_image_ci"]
            cells = [_ci({k.replace("_auroc", ""): v for k, v in f.items()}, f"test/{n}") for n in ("image",
                     "metadata", "stacked")]  # fmt: skip
            gain.append(f"| {run} | {' | '.join(cells)} | {f['test/stacked_minus_image']:+.4f} ({low:+.4f} to "
                        f"{high:+.4f}) |")  # fmt: skip
    return (
        "# The tabular stack\n\n"
        "Rendered by `python docs/generate.py` from `docs/results/stack/*.json` (one file per run: name, command,\n"
        "commit, date, machine, figures). What the stack is: [ISIC 2024](../isic2024.md).\n\n"
        "## At ISIC 2024 scale (synthetic SLICE-3D)\n\n"
        "`bench/stack_scale.py`: 401,059 lesions of 1,042 patients, 393 malignant, from `lesion.data.slice3d`, with\n"
        "simulated out-of-fold image scores; `stack.py`'s fit (features, 5 folds, calibration, threshold, 200\n"
        "patient-bootstrap resamples) in a fresh process. Goal: 5 folds in 15 minutes and 4 GB on 2 cores.\n\n"
        + "\n".join(scale)
        + "\n\n"
        "## The ablation, on synthetic data\n\n"
        "The same folds, at the same scale. These figures describe the generator's planted signal, not real lesions:\n"
        "they show each part of the stack finding what was put there (the image score alone sees only the image part;\n"
        "patient context finds the part planted relative to each patient). No figure of the stack on real ISIC 2024\n"
        "data exists yet.\n\n" + "\n".join([VARIANT_HEAD, *variants]) + "\n\n"
        "## End to end on synthetic crops\n\n"
        "The two commands as a user runs them, on a synthetic SLICE-3D written with its crops (`write_slice3d`):\n"
        "`python train.py -m experiment=isic2024_oof ... data.fold=0,1,2,3,4` trains five image models on the\n"
        "crops, whose out-of-fold scores feed `python stack.py`. Here the image score is what a network learned from\n"
        "the pixels, not a simulation.\n\n" + "\n".join(end_to_end) + "\n"
        "## ISIC 2018: does a patient's metadata add to the image score?\n\n"
        "`bench/metadata_fusion.py` on the recipe's checkpoint, on its own lesion-disjoint split: the stack fitted on\n"
        "val (age, sex, body site from HAM10000_metadata.csv + the image model's log-odds; 5 lesion-grouped folds),\n"
        "measured on test; CIs resample lesions (a lesion's images together), the gain's CI is paired.\n\n"
        + "\n".join(gain)
        + "\n"
    )


# The recipe with and without a split that did not choose its epoch, over seeds (docs/results/runs/<name>.json).
CERTIFIED = [
    "the_recipe_isic_2018_only_seed_0",
    "the_recipe_a_10_calibration_split_seed_0",
    "the_recipe_val_certifies_corrected_for_its_epochs_seed_1",
    "the_recipe_with_its_calibration_split_seed_1",
]


def certified_page() -> str:
    """The recipe's certified threshold on real data: the recorded runs' operating points and test figures, then the
    threshold certified three ways on the same models (docs/results/certification_rules.json)."""
    runs = [json.loads((RESULTS / "runs" / f"{name}.json").read_text()) for name in CERTIFIED]
    rules = json.loads((RESULTS / "certification_rules.json").read_text())
    return (
        "# Real data: the recipe's certified threshold, with and without a split that did not choose its epoch\n\n"
        "ISIC 2018, the recipe (`experiment=isic2018_cpu_best`: EfficientNet-Lite0 at 225x300, 4 epochs, target\n"
        "sensitivity 0.85 certified at 95%), its lesion-disjoint val (1,503 images) and test (1,504) splits; with a\n"
        "calibration split (`data.calibration_fraction=0.1`, the recipe's default since 2026-12-07) 999 training\n"
        "images (194 malignant) certify the threshold alone and the network trains on 6,009. Rendered by\n"
        "`python docs/generate.py` from the recorded runs and `certification_rules.json`.\n\n"
        "## The operating points as the runs stored them\n\n"
        + record_run.operating_point_table(runs)
        + "\n## The test split\n\n"
        + record_run.table(runs)
        + "\n## The same models, the threshold certified three ways\n\n"
        + f"`{rules['command']}` ({rules['date']}): on each model's own `predictions.csv`, the threshold that the\n"
        "uncorrected rule (the val split that chose the epoch, at 95%), the corrected rule (that split at\n"
        "1 - 0.05 / epochs) and the calibration split (where the run carved one) certify, and what each does on the\n"
        "test split; CIs: 1,000 class-stratified bootstrap resamples of the test images. Referred: the share of test\n"
        "images above the threshold.\n\n" + certification_rules.markdown(rules["rows"], rules["names"])
    )


def pages() -> dict[Path, str]:
    return {
        config_reference.OUT: config_reference.reference(),
        RESULTS / "ablation.md": ablation_page(),
        RESULTS / "recorded.md": recorded_page(),
        RESULTS / "app_memory.md": memory_page(),
        RESULTS / "stack.md": stack_page(),
        RESULTS / "calibration_split_real_data.md": certified_page(),
        ROOT / "README.md": readme(),
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
