"""python bench/adaptation_curve.py CKPT --data pad_ufes_20 --root ../shared/data/pad_ufes_20_sample [--sizes 0 25 50
100 all] [--draws 3] [--strategies recalibrate bn_stats head last_blocks l2sp] [--set test_fraction=0.3]
[--out docs/results/adaptation_pad]

How many labelled local photos does a site need? A fixed local test part (data.test_fraction of the site's photos,
grouped by patient or lesion, stratified: the same part `adapt.py data=<data>` tests on) is held out; from the rest,
N photos are drawn (whole groups, several draws each), split in two grouped halves, fine-tuning and calibration, and
each adaptation strategy (conf/strategy/) is run as adapt.py runs it: grouped folds of the fine-tuning half choose the
epochs, the calibration half refits the Platt map and certifies the threshold (lower bound). Each run's AUROC (CI) and
sensitivity / specificity at its certified threshold on the fixed test part go to <out>.csv, the summary to <out>.md
and a plot to <out>.png. N = 0 is the source model at its stored threshold. The quality gate is not refitted here.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lesion.data import build_datamodule  # noqa: E402
from lesion.data.splits import assign_splits  # noqa: E402
from lesion.models.adaptation import Strategy  # noqa: E402
from lesion.models.loading import load_model  # noqa: E402
from lesion.serving.adaptation import Adapter, LocalPhotos, read_local  # noqa: E402
from lesion.stats.operating_point import sensitivity_lower_bound  # noqa: E402

STRATEGIES = ("recalibrate", "bn_stats", "head", "last_blocks", "l2sp")


def config(group: str, name: str) -> dict:
    """conf/<group>/<name>.yaml as adapt.py composes it (a data config with its own defaults, csv.yaml's say)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    overrides = [f"{group}={name}", "ckpt_path=x"] + (["data=folder", "data.root=x"] if group != "data" else [])
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="adapt", overrides=overrides)
    return OmegaConf.to_container(cfg[group])


def certificate_table(target: float, confidence: float) -> str:
    """Malignant calibration photos needed to certify `target` sensitivity, by how many of them the threshold misses."""
    rows = ["| misses allowed | malignant photos needed |", "|---:|---:|"]
    for misses in range(4):
        n = next(n for n in range(misses + 1, 2000) if sensitivity_lower_bound(n - misses, n, confidence) >= target)
        rows.append(f"| {misses} | {n} |")
    return "\n".join(rows) + "\n"


def draw(pool: np.ndarray, groups: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """About n rows of `pool`, whole groups in a random order (the last group may overshoot by its size - 1)."""
    order = rng.permutation(np.unique(groups[pool]))
    taken, count = [], 0
    for g in order:
        if count >= n:
            break
        rows = pool[groups[pool] == g]
        taken.append(rows)
        count += len(rows)
    return np.concatenate(taken)


def halves(rows: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Grouped, stratified halves of `rows`: fine-tuning and calibration."""
    frame = pd.DataFrame({"image_id": rows.astype(str), "label": y[rows], "group": groups[rows]})
    split = assign_splits(frame, ("val",), "group", val_fraction=0.5, seed=seed).to_numpy()
    return rows[split == "train"], rows[split == "val"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt")
    parser.add_argument("--data", default="pad_ufes_20", help="a conf/data config for the site's photos")
    parser.add_argument("--root", required=True)
    parser.add_argument("--set", nargs="*", default=[], help="data config overrides, e.g. test_fraction=0.3")
    parser.add_argument("--sizes", nargs="+", default=["0", "25", "50", "100", "200", "all"])
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--target", type=float, default=0.85)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--resamples", type=int, default=500)
    parser.add_argument("--out", default="docs/results/adaptation")
    parser.add_argument("--render", action="store_true", help="only re-render <out>.md and <out>.png from <out>.csv")
    parser.add_argument("--parts", default="", help="with --render: the sentence describing the local parts")
    args = parser.parse_args()
    if args.render:
        return render(pd.read_csv(Path(args.out).with_suffix(".csv")), args, Path(args.out), args.parts)
    model = load_model(args.ckpt)
    data = config("data", args.data) | {"root": args.root, "num_workers": 0}
    data |= {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    data["transforms"] = dict(model.deployment.transforms)
    datamodule = build_datamodule(data, model.data_config)
    datamodule.setup()  # its test split is the local test part adapt.py data=<data> reports on
    test = read_local(datamodule, "test", model)
    photos = LocalPhotos.concat([read_local(datamodule, split, model) for split in ("train", "val")])
    pool = np.arange(len(photos))
    print(f"test part {test.counts()}, pool {photos.counts()}")
    rows, out = [], Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    source = Adapter(model, Strategy("recalibrate"))
    rows.append(result("source", 0, 0, source.report(model, test, args.resamples), {}, 0.0))
    sizes = sorted({len(pool) if s == "all" else min(int(s), len(pool)) for s in args.sizes} - {0})
    for n in sizes:
        for d in range(args.draws if n < len(pool) else 1):
            rng = np.random.default_rng([n, d])
            chosen = draw(pool, photos.groups, n, rng)
            tune, calibrate = halves(chosen, photos.y, photos.groups, seed=d)
            if photos.y[calibrate].sum() == 0 or photos.y[tune].sum() in (0, len(tune)):
                print(f"N={n} draw {d}: a half without both classes, skipped")
                continue
            for name in args.strategies:
                start = time.perf_counter()
                adapter = Adapter(model, Strategy(**config("strategy", name)), args.folds, seed=d)
                site, info = adapter.fit_site(
                    photos.subset(tune), photos.subset(calibrate), args.target, args.confidence, {"enabled": False}
                )
                report = adapter.report(site, test, args.resamples)
                rows.append(result(name, len(chosen), d, report, info, time.perf_counter() - start) | {"n_asked": n})
                print(rows[-1])
                pd.DataFrame(rows).to_csv(out.with_suffix(".csv"), index=False)
    render(pd.DataFrame(rows), args, out, f"Fixed local test part: {test.counts()}; pool {photos.counts()}.")


def render(table: pd.DataFrame, args, out: Path, parts: str = "") -> None:
    """<out>.csv, the summary <out>.md and the plot <out>.png from the table of runs."""
    if "n_asked" not in table:  # rows recorded before the asked size was kept: the nearest asked size
        asked = sorted({int(s) for s in args.sizes if s != "all"} | {int(table["n"].max())})
        table["n_asked"] = [min(asked, key=lambda a: abs(a - n)) for n in table["n"]]
    table["n_asked"] = table["n_asked"].fillna(table["n"]).astype(int)  # the source model's row: N = 0
    table.to_csv(out.with_suffix(".csv"), index=False)
    test = table[table.strategy == "source"].iloc[0]
    text = f"# Adaptation learning curve: {args.data} ({args.root}), checkpoint {args.ckpt}\n\n{parts}"
    text += f" Target sensitivity {args.target} certified at {args.confidence:.0%} on the calibration half; "
    text += "N: photos asked for (whole groups are drawn, so a draw may hold a few more).\n\n"
    text += summarise(table, args.target) + "\n"
    text += "Malignant calibration photos the certificate needs:\n\n" + certificate_table(args.target, args.confidence)
    out.with_suffix(".md").write_text(text)
    plot(
        table,
        out.with_suffix(".png"),
        args.target,
        f"{args.data} ({Path(args.root).name}): source model AUROC {test.auroc:.3f} on the test part; "
        "bars: the range over draws",
    )
    print(text)


def result(strategy: str, n: int, d: int, report: dict, info: dict, seconds: float) -> dict:
    op = info.get("operating_point", {})
    ci = report.get("test_op/auroc_ci", [math.nan, math.nan])
    return {
        "strategy": strategy,
        "n": n,
        "draw": d,
        "epochs": info.get("epochs", 0),
        "auroc": report["test/auroc"],
        "auroc_low": ci[0],
        "auroc_high": ci[1],
        "sensitivity": report["test_op/recall"],
        "specificity": report["test_op/specificity"],
        "threshold": report["threshold"],
        "calibration_malignant": op.get("val_positives"),
        "certified_lower_bound": op.get("sensitivity_lower_bound"),
        "ece": report["test_calibration/ece_after"],
        "seconds": round(seconds, 1),
    }


def summarise(table: pd.DataFrame, target: float) -> str:
    grouped = table.groupby(["strategy", "n_asked"], sort=False)
    lines = [
        "| strategy | N | photos drawn | AUROC mean (min-max) | sensitivity mean (min-max) | specificity mean | "
        f"draws with sensitivity >= {target} | certified bound mean | epochs chosen | s / run |",
        "|---|---:|---|---|---|---:|---:|---:|---|---:|",
    ]
    for (strategy, n), g in grouped:
        bound = g["certified_lower_bound"].dropna()
        drawn = f"{g.n.min()}-{g.n.max()}" if g.n.min() != g.n.max() else f"{g.n.min()}"
        lines.append(
            f"| {strategy} | {n} | {drawn} | {g.auroc.mean():.3f} ({g.auroc.min():.3f}-{g.auroc.max():.3f}) | "
            f"{g.sensitivity.mean():.3f} ({g.sensitivity.min():.3f}-{g.sensitivity.max():.3f}) | "
            f"{g.specificity.mean():.3f} | {int((g.sensitivity >= target).sum())}/{len(g)} | "
            + (
                f"{bound.mean():.3f} | {','.join(map(str, g.epochs))} | {g.seconds.mean():.0f} |"
                if len(bound)
                else "- | - | - |"
            )
        )
    return "\n".join(lines) + "\n"


def plot(table: pd.DataFrame, path: Path, target: float, title: str) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    source = table[table.strategy == "source"]
    for name, g in table[table.strategy != "source"].groupby("strategy", sort=False):
        stats = g.groupby("n_asked")[["auroc", "sensitivity", "specificity"]].agg(["mean", "min", "max"])
        for ax, metric in zip(axes, ("auroc", "sensitivity", "specificity")):
            mean = stats[(metric, "mean")]
            spread = [mean - stats[(metric, "min")], stats[(metric, "max")] - mean]  # the draws' range, as the table
            ax.errorbar(stats.index, mean, yerr=spread, marker="o", capsize=3, label=name)
    for ax, metric in zip(axes, ("auroc", "sensitivity", "specificity")):
        ax.axhline(float(source[metric].iloc[0]), color="grey", ls=":", label="source model, stored threshold")
        ax.set_xlabel("labelled local photos (N)")
        ax.set_ylabel(metric if metric != "auroc" else "AUROC")
        ax.grid(alpha=0.3)
    axes[1].axhline(target, color="red", ls="--", lw=1, label=f"target {target}")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
