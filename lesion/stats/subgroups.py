"""Figures per source and per modality (dermoscopy, clinical photo) wherever the data says which: the same screening
numbers as the pooled report, on each part, at the one stored threshold."""

from __future__ import annotations

import logging
from urllib.parse import quote, unquote

import pandas as pd
import torch

from lesion.stats.calibration import binary_calibration_scores
from lesion.stats.metrics import screening_metrics
from lesion.stats.operating_point import bootstrap_ci

GROUP_COLUMNS = ("source", "modality")  # a multi-source run sets both; a csv may carry either
# A column the data did not declare (a CSV's own `source` column) is a grouping only when each of its parts holds at
# least this many images: a column of provenance paths, one image each, is not reported per part.
MIN_PART_IMAGES = 10
log = logging.getLogger(__name__)
FIGURES = ("images", "malignant", "auroc", "pauc80", "recall", "specificity", "tp", "fn", "fp", "tn", "ece")


def aligned(frames: dict[str, pd.DataFrame] | pd.DataFrame, image_ids: list[str]) -> pd.DataFrame:
    """The GROUP_COLUMNS of `image_ids` (from a split's frame, or a datamodule's frames), in that order; no columns
    when the data names no source or modality."""
    frame = pd.concat(frames.values()) if isinstance(frames, dict) else frames
    columns = [c for c in GROUP_COLUMNS if c in frame]
    if not columns:
        return pd.DataFrame(index=range(len(image_ids)))
    rows = frame.drop_duplicates("image_id").set_index("image_id")
    return rows.loc[list(map(str, image_ids)), columns].reset_index(drop=True)


def subgroup_report(
    p: torch.Tensor,
    y: torch.Tensor,
    threshold: float,
    frame: pd.DataFrame,
    split: str = "test",
    resamples: int = 1000,
    level: float = 0.95,
    bins: int = 15,
    declared: tuple[str, ...] = (),
    min_images: int = MIN_PART_IMAGES,
) -> dict:
    """`<split>_by_<column>/<part>/<figure>` for each GROUP_COLUMNS column of `frame` (rows aligned with p and y):
    images, malignant, AUROC, pAUC80, sensitivity (`recall`) and specificity at `threshold` with their confusion
    counts (which add up to the pooled ones), ECE of P(malignant), and bootstrap CIs where both classes are present.
    A figure a part cannot have (AUROC of a part without benign images) is None. `<part>` is the value
    percent-encoded (`part_key`), so a value holding `/` stays one part. A column is reported when the data declared
    it (`declared`: data=multi declares source and modality) or when every part holds at least `min_images`."""
    report = {}
    for column in reported_columns(frame, declared, min_images):
        values = frame[column].fillna("unknown").astype(str).to_numpy()
        for value in sorted(set(values)):
            rows = torch.from_numpy(values == value)
            prefix = f"{split}_by_{column}/{part_key(value)}/"
            report |= {prefix + k: v for k, v in _figures(p[rows], y[rows], threshold, resamples, level, bins).items()}
    return report


def reported_columns(frame: pd.DataFrame, declared: tuple[str, ...] = (), min_images: int = MIN_PART_IMAGES) -> list:
    """The GROUP_COLUMNS of `frame` a user would mean as groupings: declared by the data, or whose every part holds at
    least `min_images` images (the rest are named in the log, with why)."""
    columns = []
    for column in (c for c in GROUP_COLUMNS if c in frame):
        sizes = frame[column].fillna("unknown").astype(str).value_counts()
        if column in declared or sizes.min() >= min_images:
            columns.append(column)
        else:
            log.info(
                "the %r column is not reported per part: %d parts, the smallest of %d images (fewer than %d; "
                "data=multi declares its sources)", column, len(sizes), sizes.min(), min_images,
            )  # fmt: skip
    return columns


def part_key(value: str) -> str:
    """A part's name as it stands in a report key: percent-encoded, so no character of it splits the key."""
    return quote(str(value), safe=" ()+,:;=@[]")


def _figures(p: torch.Tensor, y: torch.Tensor, threshold: float, resamples: int, level: float, bins: int) -> dict:
    y = y.long()
    both = 0 < int(y.sum()) < len(y)
    values = screening_metrics(p, y, threshold)
    out = {"images": len(y), "malignant": int(y.sum())}
    out |= {k: values[k] for k in ("recall", "specificity", "tp", "fn", "fp", "tn")}
    out["recall"] = values["recall"] if int(y.sum()) else None
    out["specificity"] = values["specificity"] if int((y == 0).sum()) else None
    out["auroc"] = values["auroc"] if both else None
    out["pauc80"] = values["pauc80"] if both else None
    out["ece"] = binary_calibration_scores(p, y, bins)["ece"]
    if both and resamples:
        out |= {f"{k}_ci": list(v) for k, v in bootstrap_ci(p, y, threshold, resamples, level).items() if k != "pauc80"}
    return out


def subgroup_table(report: dict, split: str = "test") -> str:
    """Markdown: one row per part found in a `subgroup_report`, with the CIs it has."""
    parts: dict[tuple[str, str], dict] = {}
    marker = f"{split}_by_"
    for key, value in report.items():
        if key.startswith(marker):
            column, part, figure = key.removeprefix(marker).split("/", 2)
            parts.setdefault((column, unquote(part)), {})[figure] = value
    if not parts:
        return ""
    lines = [
        "| by | part | images | malignant | AUROC (95% CI) | sensitivity (CI) | specificity (CI) | ECE |",
        "|---|---|---:|---:|---|---|---|---:|",
    ]
    for (column, part), f in parts.items():
        cells = [_cell(f, "auroc"), _cell(f, "recall"), _cell(f, "specificity")]
        lines.append(f"| {column} | {part} | {f['images']} | {f['malignant']} | {' | '.join(cells)} | {f['ece']:.3f} |")
    return "\n".join(lines) + "\n"


def _cell(figures: dict, name: str) -> str:
    value, ci = figures.get(name), figures.get(f"{name}_ci")
    if value is None:
        return "n/a"
    return f"{value:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "")
