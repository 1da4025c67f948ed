"""Fairness across people: per-group screening metrics (fairlearn MetricFrame), gaps, and skin tone from ITA."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame
from sklearn.metrics import roc_auc_score
from tqdm.auto import tqdm

# Individual Typology Angle categories (Chardon et al., Int J Cosmet Sci 1991; Del Bino et al. 2013), in degrees.
ITA_CATEGORIES = ((55, "very light"), (41, "light"), (28, "intermediate"), (10, "tan"), (-30, "brown"))
AGE_BANDS = ([0, 30, 45, 60, 75, 200], ["<30", "30-44", "45-59", "60-74", "75+"])
FITZPATRICK = ("fitzpatrick", "fitzpatrick_scale", "fitzpatrick_skin_type")


def ita_degrees(image: np.ndarray) -> float:
    """ITA = arctan((L* - 50) / b*) x 180/pi from the healthy-skin pixels of an RGB uint8 image.

    Segmentation (simple and documented): drop the near-black dermoscope vignette (L* < 15), then split the rest by
    Otsu's threshold on L*; the lighter side is healthy skin, the darker side the lesion. A near-uniform image is
    all skin. The median L* and b* of the skin pixels give the angle.
    """
    lab = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    lightness, b_star = lab[..., 0].ravel(), lab[..., 2].ravel()
    keep = lightness >= 15
    if keep.sum() < 16:
        keep = np.ones_like(keep)
    lightness, b_star = lightness[keep], b_star[keep]
    if lightness.std() > 2:
        otsu, _ = cv2.threshold(
            np.round(lightness * 2.55).astype(np.uint8), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU
        )
        skin = lightness > otsu / 2.55
        if skin.sum() >= 16:
            lightness, b_star = lightness[skin], b_star[skin]
    return math.degrees(math.atan2(float(np.median(lightness)) - 50, float(np.median(b_star))))


def ita_category(ita: float) -> str:
    """very light > 55, light 41-55, intermediate 28-41, tan 10-28, brown -30-10, dark < -30 (degrees)."""
    for bound, name in ITA_CATEGORIES:
        if ita > bound:
            return name
    return "dark"


def group_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """sex, age band, anatomical site and skin tone (a Fitzpatrick column where the data has one, else `ita`)."""
    groups = pd.DataFrame(index=frame.index)
    if "sex" in frame:
        groups["sex"] = frame["sex"]
    age = next((c for c in ("age", "age_approx") if c in frame), None)
    if age:
        bands = pd.cut(pd.to_numeric(frame[age], errors="coerce"), AGE_BANDS[0], right=False, labels=AGE_BANDS[1])
        groups["age_band"] = bands.astype(object)
    site = next((c for c in ("localization", "anatom_site_general") if c in frame), None)
    if site:
        groups["site"] = frame[site]
    fitzpatrick = next((c for c in FITZPATRICK if c in frame), None)
    if fitzpatrick:
        groups["skin_tone"] = "Fitzpatrick " + frame[fitzpatrick].astype(str)
    elif "ita" in frame:
        groups["skin_tone"] = frame["ita"].map(ita_category)
    return groups.fillna("unknown").astype(str)


def fairness_table(
    y: np.ndarray, p: np.ndarray, groups: pd.DataFrame, threshold: float, min_positives: int = 10
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-group images, malignant images, sensitivity, specificity and AUROC, plus the largest gap per metric.

    A group with fewer than `min_positives` malignant (or benign) images is flagged `underpowered` and its metrics
    are left empty rather than printed as misleading numbers; gaps use only the other groups.
    """
    y, p = np.asarray(y).astype(int), np.asarray(p, float)
    metrics = {
        "images": lambda t, s: len(t),
        "malignant": lambda t, s: int(t.sum()),
        "sensitivity": lambda t, s: float((s[t == 1] > threshold).mean()) if t.sum() else math.nan,
        "specificity": lambda t, s: float((s[t == 0] <= threshold).mean()) if (t == 0).sum() else math.nan,
        "auroc": lambda t, s: float(roc_auc_score(t, s)) if 0 < t.sum() < len(t) else math.nan,
    }
    rows, gaps = [], []
    for attribute in groups.columns:
        frame = MetricFrame(metrics=metrics, y_true=y, y_pred=p, sensitive_features=groups[attribute]).by_group
        frame = frame.reset_index().rename(columns={attribute: "group"})
        frame.insert(0, "attribute", attribute)
        benign = frame["images"] - frame["malignant"]
        frame["underpowered"] = (frame["malignant"] < min_positives) | (benign < min_positives)
        frame.loc[frame["underpowered"], ["sensitivity", "specificity", "auroc"]] = math.nan
        rows.append(frame)
        powered = frame[~frame["underpowered"]]
        for metric in ("sensitivity", "specificity", "auroc"):
            values = powered.set_index("group")[metric].dropna()
            if len(values) >= 2:
                gaps.append(
                    {
                        "attribute": attribute,
                        "metric": metric,
                        "gap": values.max() - values.min(),
                        "best": values.idxmax(),
                        "worst": values.idxmin(),
                    }
                )
    table = pd.concat(rows, ignore_index=True)
    table[["images", "malignant"]] = table[["images", "malignant"]].astype(int)
    return table, pd.DataFrame(gaps, columns=["attribute", "metric", "gap", "best", "worst"])


def fairness_markdown(table: pd.DataFrame, gaps: pd.DataFrame, threshold: float, min_positives: int) -> str:
    lines = [
        "# Fairness report",
        "",
        f"Test split, decision threshold {threshold:.4f} on calibrated P(malignant). Groups with fewer than "
        f"{min_positives} malignant or benign images are marked underpowered and their metrics left empty.",
        "",
        "| attribute | group | images | malignant | sensitivity | specificity | AUROC | note |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in table.itertuples():
        cells = [_fmt(r.sensitivity), _fmt(r.specificity), _fmt(r.auroc)]
        note = "underpowered" if r.underpowered else ""
        lines.append(f"| {r.attribute} | {r.group} | {r.images} | {r.malignant} | {' | '.join(cells)} | {note} |")
    lines += ["", "## Largest gaps between adequately powered groups", ""]
    if gaps.empty:
        lines.append("No attribute has two adequately powered groups.")
    else:
        lines += ["| attribute | metric | gap | best | worst |", "|---|---|---:|---|---|"]
        lines += [f"| {g.attribute} | {g.metric} | {g.gap:.3f} | {g.best} | {g.worst} |" for g in gaps.itertuples()]
    return "\n".join(lines) + "\n"


def _fmt(value: float) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def skin_tone_frame(datamodule, image_ids: list[str]) -> pd.DataFrame:
    """The split's metadata for `image_ids`, with `ita` estimated from the images when no Fitzpatrick column exists."""
    frame = pd.concat(datamodule.frames.values()).drop_duplicates("image_id").set_index("image_id")
    frame = frame.loc[image_ids].reset_index()
    if not any(c in frame for c in FITZPATRICK):
        read = datamodule.reader()
        frame["ita"] = [ita_degrees(read(i)) for i in tqdm(image_ids, desc="skin tone (ITA)", unit="img")]
    return frame
