"""python bench/stack_scale.py [--rows 401059] [--patients 1042] [--positives 393] [--ablation] [--out F.json]

The tabular stack at ISIC 2024 scale on this machine: a synthetic SLICE-3D table (lesion.data.slice3d: the real 55
columns, patients with 1 to thousands of lesions, planted signal) with simulated out-of-fold image scores, then, in
a fresh process, stack.py's fit (engineered, patient-relative and ugly-duckling features, 5 patient-grouped folds of
LightGBM, calibration and threshold) timed, with the process's peak RSS. Goal: <= 15 minutes and <= 4 GB.
The stack's figures printed here are on synthetic data: they say the pipeline works, not how well it screens.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def prepare(workdir: Path, rows: int, patients: int, positives: int) -> Path:
    from lesion.data.slice3d import simulated_scores, slice3d_table

    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "scores.csv").is_file():
        table = slice3d_table(rows, patients, positives, seed=0)
        table.drop(columns="image_signal").to_csv(workdir / "train-metadata.csv", index=False)
        simulated_scores(table).to_csv(workdir / "scores.csv", index=False)
    return workdir


def measure(workdir: Path, ablation: bool, resamples: int) -> dict:
    """Run in a fresh process: stack.py's run_stack on the prepared table; wall time and peak RSS."""
    from hydra import compose, initialize_config_dir

    from lesion.runs.config import to_plain
    from stack import run_stack

    overrides = [f"data.root={workdir}", f"scores={workdir / 'scores.csv'}", f"paths.output_dir={workdir / 'out'}"]
    overrides += [f"ablation={str(ablation).lower()}", f"bootstrap.resamples={resamples}"]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        config = to_plain(compose("stack", overrides))
    start = time.perf_counter()
    metrics = run_stack(config)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    keep = ("oof/pauc80", "oof/auroc", "oof/top15_sensitivity", "test/pauc80", "test/auroc", "features")
    figures = {"seconds": round(seconds, 1), "peak_rss_mb": round(peak)} | {k: metrics.get(k) for k in keep}
    return figures | {"ablation_rows": metrics.get("ablation", [])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=401_059)
    parser.add_argument("--patients", type=int, default=1_042)
    parser.add_argument("--positives", type=int, default=393)
    parser.add_argument("--ablation", action="store_true", help="also fit the four ablation stacks")
    parser.add_argument("--resamples", type=int, default=200, help="patient-bootstrap resamples for the CIs")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/lesion-stack"))
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.ablation, args.resamples)))
        return
    workdir = prepare(args.workdir / str(args.rows), args.rows, args.patients, args.positives)
    command = [sys.executable, __file__, "--measure", str(workdir), "--resamples", str(args.resamples)]
    done = subprocess.run(command + (["--ablation"] if args.ablation else []), capture_output=True, text=True,
                          env=os.environ | {"NO_ALBUMENTATIONS_UPDATE": "1"})  # fmt: skip
    if done.returncode:
        sys.exit(done.stderr[-4000:])
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    record = {"rows": args.rows, "patients": args.patients, "positives": args.positives, "ablation": args.ablation}
    record |= figures | {"cpus": os.cpu_count(), "machine": platform.processor() or platform.machine()}
    print(f"{args.rows:,} lesions x {figures['features']} features, 5 folds{' + ablation' if args.ablation else ''}: "
          f"{figures['seconds']:.0f} s, peak RSS {figures['peak_rss_mb']:,} MB")  # fmt: skip
    print(json.dumps(record, indent=2))
    if args.out:
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
