"""Evaluation artifacts: the confusion table in Markdown, confusion-matrix and ROC plots."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torchmetrics.functional.classification import binary_precision_recall_curve, binary_roc  # noqa: E402

LABELS = ("benign", "malignant")


def confusion_table(counts: dict[str, int], labels: tuple[str, str] = LABELS) -> str:
    """Actual x predicted counts with totals, as a Markdown table (the study's layout)."""
    tn, fp, fn, tp = counts["tn"], counts["fp"], counts["fn"], counts["tp"]
    neg, pos = labels
    rows = [
        f"| actual \\ predicted | {neg} | {pos} | total |",
        "|---|---:|---:|---:|",
        f"| **{neg}** | {tn} | {fp} | {tn + fp} |",
        f"| **{pos}** | {fn} | {tp} | {fn + tp} |",
        f"| **total** | {tn + fn} | {fp + tp} | {tn + fp + fn + tp} |",
    ]
    return "\n".join(rows) + "\n"


def markdown_table(frame, digits: int = 3) -> str:
    """A DataFrame as a Markdown table, floats to `digits` places."""

    def cell(value) -> str:
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


DOMAIN_KEYS = (
    "test/auroc",
    "test_op/recall",
    "test_op/specificity",
    "test_calibration/ece_after",
    "threshold",
    "test_op/auroc_ci",
    "test_op/recall_ci",
    "test_op/specificity_ci",
)


def domain_shift_table(in_domain: dict, external: dict) -> str:
    """Markdown: the checkpoint's own test figures next to an external set's, at the same stored threshold (what a
    second clinic inherits from the first), and next to each source / modality of the external set where its data
    names them (`lesion.stats.subgroups`)."""
    rows = [
        ("AUROC", "test/auroc"),
        ("sensitivity at the stored threshold", "test_op/recall"),
        ("specificity at the stored threshold", "test_op/specificity"),
        ("ECE of P(malignant)", "test_calibration/ece_after"),
    ]
    columns = {"in-domain test": in_domain, "external": external} | _parts(external)
    lines = [
        f"# In-domain vs external (threshold {external.get('threshold', float('nan')):.4f})",
        "",
        f"In-domain: the checkpoint's own test split ({in_domain.get('source', 'no metrics.json found')}).",
        "",
        "| metric | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    lines += [f"| {label} | " + " | ".join(metric_cell(c, key) for c in columns.values()) + " |" for label, key in rows]
    return "\n".join(lines) + "\n"


def _parts(report: dict) -> dict[str, dict]:
    """Each `test_by_<column>/<part>/...` of a report as a flat report of its own, under the pooled keys' names."""
    names = {"auroc": "test/auroc", "recall": "test_op/recall", "specificity": "test_op/specificity"}
    names |= {"ece": "test_calibration/ece_after", "images": "images"}
    names |= {f"{k}_ci": f"test_op/{k}_ci" for k in ("auroc", "recall", "specificity")}
    parts: dict[str, dict] = {}
    for key, value in report.items():
        if key.startswith("test_by_") and key.count("/") == 2:
            column, part, figure = key.removeprefix("test_by_").split("/")
            if figure in names:
                parts.setdefault(f"external: {part} ({column})", {})[names[figure]] = value
    return parts


def metric_cell(values: dict, key: str) -> str:
    """A metric of a flat report to 3 decimals, with its bootstrap CI when the report has one (`test_op/..._ci`)."""
    value = values.get(key)
    ci = values.get(key.replace("test/", "test_op/") + "_ci") if "calibration" not in key else None
    text = "n/a" if value is None else f"{value:.3f}"
    return text + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci and value is not None else "")


def plot_confusion(counts: dict[str, int], path: Path, labels: tuple[str, str] = LABELS) -> None:
    matrix = [[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]]
    fig, ax = plt.subplots(figsize=(4, 3.6))
    ax.imshow(matrix, cmap="Blues")
    peak = max(max(row) for row in matrix) or 1
    for i in range(2):
        for j in range(2):
            color = "white" if matrix[i][j] > peak / 2 else "black"
            ax.text(j, i, str(matrix[i][j]), ha="center", va="center", color=color, fontsize=13)
    ax.set_xticks([0, 1], labels)
    ax.set_yticks([0, 1], labels)
    _finish(fig, ax, path, "predicted", "actual", "Confusion matrix")


def _finish(fig, ax, path: Path, xlabel: str, ylabel: str, title: str, legend: str | None = None) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if legend:
        ax.legend(loc=legend, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_roc(p_malignant: torch.Tensor, target: torch.Tensor, path: Path, auroc: float | None = None) -> None:
    fpr, tpr, _ = binary_roc(p_malignant.float(), target.long())
    fig, ax = plt.subplots(figsize=(4.2, 4))
    label = f"AUROC {auroc:.3f}" if auroc is not None else None
    ax.plot(fpr.numpy(), tpr.numpy(), lw=2, label=label)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.axhspan(0.8, 1.0, color="tab:green", alpha=0.08, label="TPR >= 0.8 (pAUC80 region)")
    _finish(fig, ax, path, "1 - specificity (FPR)", "sensitivity (TPR)", "ROC, malignant vs benign", "lower right")


def plot_pr(p_malignant: torch.Tensor, target: torch.Tensor, path: Path) -> None:
    precision, recall, _ = binary_precision_recall_curve(p_malignant.float(), target.long())
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot(recall.numpy(), precision.numpy(), lw=2)
    ax.axhline(float(target.float().mean()), ls="--", color="grey", lw=1, label="prevalence")
    _finish(fig, ax, path, "sensitivity (recall)", "precision (PPV)", "Precision-recall, malignant", "upper right")


def plot_robustness(table, path: Path) -> None:
    """AUROC and sensitivity at the stored threshold against severity, one line per degradation."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharex=True)
    for name, rows in table.groupby("degradation", sort=False):
        for ax, metric in zip(axes, ("auroc", "sensitivity")):
            ax.plot(rows["severity"], rows[metric], marker="o", label=name)
    for ax, title in zip(axes, ("AUROC", "sensitivity at the operating threshold")):
        ax.set_xlabel("severity (0 = clean)")
        ax.set_title(title)
        ax.set_xticks(sorted(table["severity"].unique()))
    axes[1].legend(fontsize=7, loc="lower left")
    fig.suptitle("Robustness to phone-camera conditions")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_sweep(table, metric: str, path: Path) -> None:
    """A bar per sweep job of its best monitored val metric, labelled by its overrides; with test AUROC and its
    bootstrap CI beside it when the jobs report them."""
    done = table[table[metric].notna()].reset_index(drop=True)
    with_test = "test_op/auroc" in done and "test_op/auroc_ci" in done and done["test_op/auroc_ci"].astype(bool).all()
    fig, ax = plt.subplots(figsize=(7.5, (0.7 if with_test else 0.45) * len(done) + 1.4))
    rows = range(len(done))
    height = 0.4 if with_test else 0.8
    ax.barh([r - height / 2 * with_test for r in rows], done[metric], height, color="tab:blue", label=metric)
    for i, value in enumerate(done[metric]):
        ax.text(value, i - height / 2 * with_test, f" {value:.3f}", va="center", fontsize=8)
    if with_test:
        bounds = [[float(x) for x in str(ci).split("-", 1)] if ci else [np.nan] * 2 for ci in done["test_op/auroc_ci"]]
        test = done["test_op/auroc"].to_numpy(float)
        low = np.clip(test - [b[0] for b in bounds], 0, None)  # a percentile CI need not contain the point
        high = np.clip([b[1] for b in bounds] - test, 0, None)
        ax.barh([r + height / 2 for r in rows], test, height, color="tab:orange",
                xerr=[low, high], capsize=2, label="test AUROC (95% CI)")  # fmt: skip
        for i, value in enumerate(test):
            ax.text(value, i + height / 2, f" {value:.3f}", va="center", fontsize=8)
    labels = [o or "(defaults)" for o in done["overrides"]]
    if "init" in done:
        labels = [f"{label}\n[{init}]" for label, init in zip(labels, done["init"])]
    ax.set_yticks(list(rows), labels, fontsize=8)
    ax.invert_yaxis()
    _finish(
        fig,
        ax,
        path,
        metric if not with_test else "AUROC",
        "",
        "Sweep: " + metric,
        "lower right" if with_test else None,
    )


def plot_reliability(p_malignant: dict[str, torch.Tensor], target: torch.Tensor, path: Path, bins: int = 10) -> None:
    """Observed malignant fraction against mean P(malignant) per bin, one line per calibration state."""
    fig, ax = plt.subplots(figsize=(4.4, 4.2))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    edges = torch.linspace(0, 1, bins + 1)
    y = target.float()
    for name, p in p_malignant.items():
        which = torch.bucketize(p.float().clamp(0, 1), edges[1:-1])
        filled = [b for b in range(bins) if (which == b).any()]
        xs = [float(p[which == b].mean()) for b in filled]
        ax.plot(xs, [float(y[which == b].mean()) for b in filled], marker="o", lw=1.5, label=name)
    _finish(
        fig, ax, path, "mean predicted P(malignant)", "observed malignant fraction", "Reliability diagram", "upper left"
    )


def plot_importance(gain, path: Path, top: int = 30) -> None:
    """The stack's `top` features by total split gain (a pandas Series, largest first), as horizontal bars."""
    shown = gain.head(top)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.22 * len(shown) + 1.2))
    ax.barh(shown.index, shown.to_numpy() / max(gain.sum(), 1e-12))
    ax.set_xlabel("share of the trees' total split gain")
    ax.set_title(f"The stack's {len(shown)} most used features")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
