"""MODEL_CARD.md (Mitchell et al., "Model Cards for Model Reporting") from a checkpoint and its eval artifacts."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pandas as pd

from lesion.models.module import LesionClassifier
from lesion.serving.adaptation import site_adaptation, site_section
from lesion.serving.inference import DISCLAIMER
from lesion.serving.provenance import modality_scope, population_limits, source_line, test_limit, training_sources

OP_METRICS = [("auroc", "AUROC"), ("pauc80", "pAUC80 (TPR >= 0.8)"), ("recall", "sensitivity"),
              ("specificity", "specificity")]  # fmt: skip


def find_eval_dir(ckpt_path: Path, search: Path) -> Path | None:
    """The newest in-domain eval.py run dir under `search` whose metrics.json names this checkpoint (an external
    evaluation, `data.external=true`, is listed by `external_evals` instead)."""
    found = [d for d, values in _evals(ckpt_path, search) if "in_domain/test/auroc" not in values]
    return max(found, key=lambda d: d.stat().st_mtime) if found else None


def external_evals(ckpt_path: Path, search: Path) -> list[tuple[Path, dict]]:
    """Every external evaluation (eval.py data.external=true) under `search` naming this checkpoint, oldest first."""
    found = [(d, values) for d, values in _evals(ckpt_path, search) if "in_domain/test/auroc" in values]
    return sorted(found, key=lambda item: item[0].stat().st_mtime)


def _evals(ckpt_path: Path, search: Path) -> list[tuple[Path, dict]]:
    matches = []
    for metrics in search.glob("**/metrics.json"):
        try:
            values = json.loads(metrics.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        # eval.py names the checkpoint it read, and the calibrated one it wrote (e.g. an ensemble's ensemble.ckpt)
        named = [values.get("checkpoint"), values.get("calibrated_checkpoint")]
        if any(isinstance(n, str) and Path(n).resolve() == ckpt_path.resolve() for n in named):
            matches.append((metrics.parent, values))
    return matches


def external_table(evals: list[tuple[Path, dict]]) -> str:
    """One row per external evaluation: its data config and root, images, AUROC and sensitivity / specificity at the
    stored threshold, with CIs."""
    if not evals:
        return "_No external evaluation found (`python eval.py ckpt_path=... data=... data.external=true`)._\n"
    rows = [
        "| data | images | AUROC (95% CI) | sensitivity (CI) | specificity (CI) | run |",
        "|---|---:|---|---|---|---|",
    ]
    for path, m in evals:
        data = m.get("data") or {}
        images = sum(int(m.get(f"test/{k}", 0)) for k in ("tp", "fn", "fp", "tn"))
        cells = [_with_ci(m, "test/auroc", "test_op/auroc_ci"), _with_ci(m, "test_op/recall", "test_op/recall_ci")]
        cells.append(_with_ci(m, "test_op/specificity", "test_op/specificity_ci"))
        name = f"`{data.get('name', '?')}` at `{data.get('root', '?')}`"
        rows.append(f"| {name} | {images} | {' | '.join(cells)} | `{path}` |")
    return "\n".join(rows) + "\n"


def _with_ci(metrics: dict, key: str, ci_key: str) -> str:
    value, ci = metrics.get(key), metrics.get(ci_key)
    return "n/a" if value is None else f"{value:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "")


def _section(path: Path | None, name: str, how: str) -> str:
    if path is None or not (path / name).is_file():
        return f"_Not evaluated: {how}_\n"
    lines = (path / name).read_text().splitlines()
    return "\n".join(line for line in lines if not line.startswith("# ")).strip() + "\n"


def _metrics_table(metrics: dict) -> str:
    rows = ["| metric | at the operating threshold | 95% CI | at 0.5 |", "|---|---:|---|---:|"]
    for key, label in OP_METRICS:
        value, ci, half = metrics.get(f"test_op/{key}"), metrics.get(f"test_op/{key}_ci"), metrics.get(f"test/{key}")
        if value is None:
            continue
        ci_text = f"{ci[0]:.3f} to {ci[1]:.3f}" if ci else "n/a"
        rows.append(f"| {label} | {value:.3f} | {ci_text} | {half:.3f} |" if half is not None else "")
    return "\n".join(r for r in rows if r)


def _training_data(model: LesionClassifier, run_dir: Path, adaptation: dict | None = None) -> str:
    data = dict(model.hparams.get("data") or {})
    sources = training_sources(data)
    lines = [f"- Source {source_line(key, provenance)}." for key, provenance in sources]
    if adaptation:
        site = adaptation.get("data") or {}
        for key, provenance in training_sources(site):
            lines.append(f"- Adapted to the site data {source_line(key, provenance)} (root `{site.get('root')}`).")
    lines += [
        f"- Data config: `{data.get('name', 'unknown')}` (task `{data.get('task', 'binary')}`), root "
        f"`{data.get('root')}`.",
        f"- Classes: {', '.join(model.hparams.class_names)}; malignant: {', '.join(model.hparams.malignant)}.",
    ]
    splits = run_dir / "splits.csv"
    if splits.is_file():
        counts = pd.read_csv(splits)["split"].value_counts()
        lines.append(
            "- Splits (lesion-disjoint where the data names lesions): "
            + ", ".join(
                f"{k} {int(counts.get(k, 0)):,}" for k in ("train", "val", "test", "calibration") if k in counts
            )
            + f" images (`{splits}`)."
        )
    transforms = data.get("transforms") or {}
    lines.append(
        f"- Preprocessing: resize to {_size(model)}"
        + (", Shades of Gray colour constancy" if transforms.get("color_constancy") else "")
        + (", CLAHE" if transforms.get("clahe") else "")
        + f"; training augmentation: {', '.join(k for k in ('hflip', 'vflip', 'phone') if transforms.get(k)) or 'none'}"
        + (f", rotation +-{transforms['rotate']} deg" if transforms.get("rotate") else "")
        + "."
    )
    return "\n".join(lines)


def model_card(
    model: LesionClassifier,
    ckpt_path: Path,
    eval_dir: Path | None,
    exported: list[Path] | None = None,
    external: list[tuple[Path, dict]] | None = None,
) -> str:
    """The card's Markdown. Metrics come from eval.py's in-domain metrics.json when there is one, else from train.py's
    (adapt.py's, for a site checkpoint: its local test part); `external`: the external evaluations
    (`external_evals`), each named by its data."""
    adaptation = site_adaptation(ckpt_path)
    run_dir = ckpt_path.resolve().parent if adaptation else ckpt_path.resolve().parent.parent
    # A site model's training data is its source's (its local parts are in the adaptation section)
    train_dir = Path(adaptation["source_checkpoint"]).resolve().parent.parent if adaptation else run_dir
    source = eval_dir / "metrics.json" if eval_dir else run_dir / "metrics.json"
    metrics = json.loads(source.read_text()) if source.is_file() else {}
    threshold = float(model.deployment.threshold)
    backbone = dict(model.hparams.backbone)
    how_eval = f"run `python eval.py ckpt_path={ckpt_path}` and export again."
    where = (
        "The site's local test part (adapt.py: never used to fine-tune or calibrate)"
        if adaptation and not eval_dir
        else "The in-domain test split of the training data"
    )
    metrics_text = (
        f"{where}, from `{source}`. Operating threshold {threshold:.4f} on calibrated P(malignant), chosen on the"
        f" {_calibrated_on(model, adaptation)} for sensitivity >= its target{_certificate(model)}; bootstrap"
        f" 95% confidence intervals.\n\n{_metrics_table(metrics)}\n"
        if metrics
        else f"_No metrics found: {how_eval}_\n"
    )
    metrics_text += "\n### External sets (another clinic or camera, at the stored threshold)\n\n"
    metrics_text += external_table(external or [])
    if adaptation:
        metrics_text += "\n" + site_section(adaptation)
    calibration = ""
    if "test_calibration/ece_before" in metrics:
        calibration = (
            f"\nCalibration ({_calibration(model)}): ECE {metrics['test_calibration/ece_before']:.3f} -> "
            f"{metrics['test_calibration/ece_after']:.3f}, Brier {metrics['test_calibration/brier_before']:.3f} -> "
            f"{metrics['test_calibration/brier_after']:.3f}.\n"
        )
    files = "".join(f"- `{p}`\n" for p in exported or [])
    sources = training_sources(model.hparams.get("data"))
    return f"""# Model card: lesion screening model ({backbone.get("model_name")})

> {DISCLAIMER}

## Model details
- Checkpoint: `{ckpt_path}`; card written {date.today().isoformat()} by `export.py` of the `lesion` framework.
- Architecture: timm `{backbone.get("model_name")}`; cut after: `{backbone.get("cut_after") or "no cut"}`;
  head: `{backbone.get("head")}`; frozen: `{", ".join(backbone.get("freeze") or []) or "nothing"}`;
  LAuReL: `{backbone.get("laurel", "none")}`; input: {_size(model)} RGB.
{_ensemble(model)}- Output: calibrated P(malignant) ({_calibration(model)});
  "refer" above {threshold:.4f}.
{files}
## Intended use
- Research on screening skin lesions from photos: ranking and flagging lesions so that a person sees a doctor sooner.
- Decision support studies with a clinician in the loop, on populations like the training data.

## Out-of-scope use
- Diagnosis, or ruling a lesion out: a "low" result must never stop anyone from seeing a doctor.
- Use without clinical validation on the target population, camera and setting.
{modality_scope(sources)}
- Children, mucosa, nails, scalp under hair, and skin types the training data barely covers (see fairness).
- Any image that is not a single skin lesion.

## Training data
{_training_data(model, train_dir, adaptation)}

## Metrics at the operating point
{metrics_text}{calibration}
## Fairness
{_section(eval_dir, "fairness.md", how_eval)}
## Robustness to phone-camera conditions
{_section(eval_dir, "robustness.md", how_eval)}
## Quality gate
{_quality(model)}
## Limitations
- {test_limit(adaptation, eval_dir, len(sources))}
{population_limits(sources)}
- The skin-tone estimate of the fairness report (ITA) is a proxy, not a Fitzpatrick assessment; groups marked
  underpowered there have too few malignant or benign images to be judged.
- The threshold was certified for a target sensitivity on the {_calibrated_on(model, adaptation)}; on other data
  the sensitivity can be lower.
- Grad-CAM maps show where the score came from, not why, and can be misleading.
"""


def _calibrated_on(model, adaptation: dict | None) -> str:
    """Which images fitted the calibration and the threshold, and whether they also chose the checkpoint: the
    lower-bound promise assumes they did not."""
    if adaptation:
        return (
            "local calibration part (fine-tuning never saw it; grouped folds of the fine-tuning part chose the epochs)"
        )
    op = model.deployment.operating_point or {}
    if op.get("calibration_split") == "calibration":
        return (
            "separate calibration split (data.calibration_fraction), not the validation split that chose the epoch "
            "(its images were held out of training to keep the promise: see the splits under Training data)"
        )
    compared, asked = op.get("checkpoints_compared"), op.get("confidence_asked")
    if compared == 1:
        return "validation split (one checkpoint: it chose nothing)"
    if compared and asked is not None and op.get("confidence") not in (None, asked):
        return (
            f"validation split, which also chose the epoch among {compared} checkpoints: certified at "
            f"{op['confidence']:.4f} (Bonferroni), so the {asked:.0%} promise holds for the one chosen"
        )
    return "validation split, which also chose the epoch (no separate calibration split: data.calibration_fraction=0)"


def _certificate(model) -> str:
    """What the threshold certifies and from how many malignant images (the price of a promise is the images it needs
    and the specificity a lower threshold costs: docs/screening.md)."""
    op = model.deployment.operating_point or {}
    if op.get("method") != "lower_bound" or op.get("sensitivity_lower_bound") is None:
        return ""
    return (
        f" ({op.get('target_sensitivity')} with {op['confidence']:.4g} confidence: the lower bound reached "
        f"{op['sensitivity_lower_bound']:.3f} from {op.get('val_positives')} malignant images, {op.get('val_detected')}"
        " detected)"
    )


def _quality(model) -> str:
    """The quality gate's stored thresholds (lesion.serving.quality), as predict.py and app.py apply them."""
    q = model.deployment.quality
    if not q:
        return "_No fitted thresholds (trained before the gate): predict.py and app.py check only size and flatness._\n"
    p = q.get("percentiles", {})
    return (
        f"Before any prediction, predict.py and app.py answer `retake` (never a probability) for a photo whose short "
        f"side is under {q['min_side']} px; that is featureless (grey std under {q['min_contrast']:.0f} at the input "
        f"size); with more than {q['max_highlights']:.1%} clipped highlights or {q['max_shadows']:.1%} crushed "
        f"shadows ({p.get('exposure_percentile')}th percentile of the training images); blurrier than the "
        f"blurriest {p.get('sharpness_percentile')}% of the training images (Laplacian variance under "
        f"{q['min_sharpness']:.1f}); or {_ood(q)} ({p.get('ood_percentile')}th percentile of the validation "
        f"images: unlike a skin close-up). Fitted on {q['fitted_on']['training_images']} training and "
        f"{q['fitted_on']['val_images']} validation images.\n"
    )


def _ood(q: dict) -> str:
    if "feature_residual" in q:
        d = q["feature_residual"]
        return (
            f"with more than {d['max_residual']:.3f} of its pooled feature outside the {d['components']} principal "
            f"directions of {q['fitted_on']['feature_images']} training images' features"
        )
    if "max_energy" in q:
        return f"with an energy score over {q['max_energy']:.3f}"
    return "(no out-of-distribution threshold)"


def _calibration(model) -> str:
    a, b = (float(v) for v in model.deployment.platt)
    text = f"temperature scaling of the class logits, T = {float(model.deployment.temperature):.4f}"
    return text + (f"; Platt map of P(malignant), a = {a:.4f}, b = {b:.4f}" if (a, b) != (1.0, 0.0) else "")


def _ensemble(model) -> str:
    members = model.hparams.get("members")
    if not members:
        return ""
    paths = getattr(model, "member_paths", None) or []
    named = f": {', '.join(f'`{p}`' for p in paths)}" if paths else ""
    return f"- Ensemble of {len(members)} checkpoints (mean logits, one calibration and threshold){named}.\n"


def _size(model) -> str:
    _, height, width = model.data_config["input_size"]
    return f"{height} px" if height == width else f"{width}x{height} px (width x height)"
