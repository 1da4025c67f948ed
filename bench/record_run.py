"""python bench/record_run.py NAME METRICS_JSON --command "python train.py ..." [--time-log LOG] [--out DIR]
python bench/record_run.py --table [--operating-point | --ablation] docs/results/runs/<a>.json ... [--out-md FILE]

Results as data: a measured run becomes a small recorded file (its name, command, commit, date, machine and the
figures from its metrics.json: pooled, per source / modality, in-domain and external), and tables are rendered from
those files, never typed by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
from datetime import date
from pathlib import Path

KEEP = ("test/auroc", "test_op/auroc_ci", "test_op/recall", "test_op/recall_ci", "test_op/specificity")
KEEP += ("test_op/specificity_ci", "threshold", "best_val_score", "fit_seconds", "in_domain/test/auroc", "data")
KEEP += ("test_op/tp", "test_op/fn", "test_op/fp", "test_op/tn", "strategy", "epochs", "counts")
KEEP += ("val_op/recall", "calibration_op/recall", "operating_point/calibration_split", "operating_point/val_positives")
KEEP += ("operating_point/val_detected", "operating_point/sensitivity_lower_bound", "target_sensitivity")
KEEP += ("operating_point/confidence", "operating_point/confidence_asked", "operating_point/checkpoints_compared")
KEEP += ("after_fit_seconds", "train_img_per_s", "test_calibration/ece_after")

# GNU time's -v report (`/usr/bin/time -v python train.py ...`): the whole process, wall clock and peak memory
TIME_FIGURES = {
    "wall_seconds": r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)",
    "user_seconds": r"User time \(seconds\): ([\d.]+)",
    "system_seconds": r"System time \(seconds\): ([\d.]+)",
    "peak_rss_mb": r"Maximum resident set size \(kbytes\): (\d+)",
    "minor_page_faults": r"Minor \(reclaiming a frame\) page faults: (\d+)",
}


def timed(log: Path) -> dict:
    """The figures of GNU time's -v report at the end of `log`; an error naming the file when it has none."""
    text = log.read_text(errors="replace")
    found = {key: re.findall(pattern, text) for key, pattern in TIME_FIGURES.items()}
    missing = [key for key, values in found.items() if not values]
    if missing:
        raise SystemExit(
            f"{log}: no GNU time -v report ({', '.join(missing)} missing): run `/usr/bin/time -v python ...`"
        )
    values = {key: values[-1] for key, values in found.items()}
    clock = [float(part) for part in values.pop("wall_seconds").split(":")]
    figures = {"wall_seconds": round(sum(v * 60**i for i, v in enumerate(reversed(clock))), 1)}
    figures |= {k: float(values[k]) for k in ("user_seconds", "system_seconds")}
    return figures | {
        "peak_rss_mb": round(int(values["peak_rss_mb"]) / 1024),
        "minor_page_faults": int(values["minor_page_faults"]),
    }


def record(name: str, metrics: Path, command: str, commit: str | None = None, time_log: Path | None = None) -> dict:
    """`commit`: the tree the run was made with, when not the one checked out now. `time_log`: the run's output with
    GNU time's -v report at its end (wall clock, CPU seconds, peak RSS, page faults of the whole process)."""
    values = json.loads(metrics.read_text())
    kept = ("source/", "after_fit_seconds/")
    figures = {k: v for k, v in values.items() if k in KEEP or "_by_" in k or k.startswith(kept)}
    figures |= timed(time_log) if time_log else {}
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    commit = commit or head
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"
    return {"name": name, "command": command, "date": date.today().isoformat(), "commit": commit, "machine": machine,
            "metrics": str(metrics), "figures": figures}  # fmt: skip


def cell(figures: dict, key: str) -> str:
    value, ci = figures.get(key), figures.get("test_op/auroc_ci" if key == "test/auroc" else f"{key}_ci")
    if value is None:
        return "-"
    return f"{value:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "")


def table(records: list[dict]) -> str:
    """One row per record: its pooled figures as they apply to each set, found by the keys each run kind writes."""
    lines = ["| run (command, date) | set | images | AUROC (95% CI) | sensitivity (CI) | specificity (CI) |",
             "|---|---|---:|---|---|---|"]  # fmt: skip
    for r in records:
        for label, f in parts(r["figures"]):
            counts = [f.get(f"test_op/{k}") for k in ("tp", "fn", "fp", "tn")]
            images = f.get("images", int(sum(counts)) if None not in counts else "-")
            row = [cell(f, "test/auroc"), cell(f, "test_op/recall"), cell(f, "test_op/specificity")]
            lines.append(f"| {r['name']}: `{r['command']}` ({r['date']}) | {label} | {images} | {' | '.join(row)} |")
    return "\n".join(lines) + "\n"


def operating_point_table(records: list[dict]) -> str:
    """One row per record: which split certified the threshold, from how many malignant images, and the sensitivity
    it then had on val and on the test split against its target."""
    lines = ["| run (command, date) | threshold fitted on | malignant there (detected) | certified bound | target | "
             "threshold | val sensitivity | test sensitivity (CI) | test specificity (CI) |",
             "|---|---|---:|---:|---:|---:|---:|---|---|"]  # fmt: skip
    for r in records:
        f = r["figures"]
        split = f.get("operating_point/calibration_split", "val")
        compared = f.get("operating_point/checkpoints_compared") or 1
        corrected = (
            split == "val"
            and compared > 1
            and f.get("operating_point/confidence")
            != f.get("operating_point/confidence_asked", f.get("operating_point/confidence"))
        )
        split = "separate calibration split" if split != "val" else "val (also chose the epoch)"
        split += f", corrected for {compared} epochs" if corrected else ""
        found = f"{f.get('operating_point/val_positives')} ({f.get('operating_point/val_detected')})"
        bound, target = f.get("operating_point/sensitivity_lower_bound"), f.get("target_sensitivity")
        row = [split, found, f"{bound:.3f}", f"{target}", f"{f['threshold']:.4f}", f"{f['val_op/recall']:.3f}"]
        row += [cell(f, "test_op/recall"), cell(f, "test_op/specificity")]
        lines.append(f"| {r['name']}: `{r['command']}` ({r['date']}) | {' | '.join(row)} |")
    return "\n".join(lines) + "\n"


def ablation_table(records: list[dict]) -> str:
    """One row per record of the ablation (docs/results/ablation/*.json), in the order of its `row`: in-domain test and
    external (ISIC 2017 test) figures, training time; a run shared with other work says so in its notes."""
    head = ["run (command, date)", "val AUROC", "test AUROC (95% CI)", "test bal. acc. (7 cl.)"]
    head += ["test sens. at val thr. (CI)", "test spec. at val thr. (CI)", "external AUROC (CI)"]
    head += ["external sens. / spec.", "train min", "img/s"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---|---:|---|---|---|---|---|---:|"]
    for r in sorted(records, key=lambda r: r.get("row", 0)):
        f = r["figures"]
        ext = {k.removeprefix("external"): v for k, v in f.items() if k.startswith("external")}
        ext = {("test" + k if k.startswith("/") else "test_op" + k.removeprefix("_op")): v for k, v in ext.items()}
        ext["test_op/auroc_ci"] = ext.pop("test/auroc_ci", None)
        pair = (
            "-"
            if "external_op/recall" not in f
            else f"{f['external_op/recall']:.3f} / {f['external_op/specificity']:.3f}"
        )
        minutes = f.get("train_time") or (f"{f['train_minutes']:.1f}" if "train_minutes" in f else "-")
        minutes += "*" if r.get("notes") else ""
        row = [cell(f, "best_val_score"), cell(f, "test/auroc"), cell(f, "test/balanced_accuracy")]
        row += [cell(f, "test_op/recall"), cell(f, "test_op/specificity"), cell(ext, "test/auroc"), pair, minutes]
        row += [f"{f['train_img_per_s']:.1f}" if "train_img_per_s" in f else "-"]
        lines.append(f"| {r['name']}: `{r['command']}` ({r['date']}) | {' | '.join(row)} |")
    notes = [f"{r['name']}: {r['notes']}" for r in sorted(records, key=lambda r: r.get("row", 0)) if r.get("notes")]
    return "\n".join(lines) + "\n" + "".join(f"\n\\* {n}" for n in notes) + ("\n" if notes else "")


def parts(figures: dict) -> list[tuple[str, dict]]:
    """(label, figures under pooled names) for each set a record covers: per source where it has them."""
    found: dict[str, dict] = {}
    for key, value in figures.items():
        if key.startswith("test_by_source/"):
            _, source, name = key.split("/", 2)
            pooled = {"auroc": "test/auroc", "images": "images"}.get(name, f"test_op/{name}")
            found.setdefault(f"test split: {source}", {})[pooled] = value
    if found:
        return list(found.items())
    data = figures.get("data") or {}
    label = f"{data.get('name')} at {data.get('root')}" if data else "test split"
    if not data.get("part"):
        return [(label, figures)]
    # an adapt.py run: the site model and its source model on the same local test part
    source = {k.removeprefix("source/"): v for k, v in figures.items() if k.startswith("source/")}
    site = f"{label} ({data['part']}), site model ({figures.get('strategy')}, {figures.get('epochs')} epochs)"
    return [(f"{label} ({data['part']}), source model", source), (site, figures)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("args", nargs="+")
    parser.add_argument("--command")
    parser.add_argument("--out", default="docs/results/runs")
    parser.add_argument("--table", action="store_true", help="render the given record files as one table")
    parser.add_argument("--operating-point", action="store_true", help="with --table: the operating points")
    parser.add_argument("--ablation", action="store_true", help="with --table: the ablation's columns")
    parser.add_argument("--commit", help="the commit the run was made with (default: the one checked out)")
    parser.add_argument("--out-md")
    parser.add_argument("--time-log", type=Path, help="the run's output ending in GNU time's -v report")
    args = parser.parse_args()
    if args.table:
        records = [json.loads(Path(p).read_text()) for p in args.args]
        render = operating_point_table if args.operating_point else ablation_table if args.ablation else table
        text = render(records)
        if args.out_md:
            Path(args.out_md).write_text(text)
        print(text)
        return
    name, metrics = args.args
    rec = record(name, Path(metrics), args.command or "", args.commit, args.time_log)
    path = Path(args.out) / f"{re.sub(r'[^a-z0-9]+', '_', name.lower()).strip('_')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec, indent=2, sort_keys=True))
    print(path)


if __name__ == "__main__":
    main()
