"""Local recalibration: a clinic adopting a model refits its calibration (the Platt map of P(malignant) when the model
has one, else the temperature) and threshold on one stratified part of its own labelled photos (the lower-bound
rule), keeps a site-specific copy of the checkpoint, and sees what that buys on the other part, never on the photos it
refitted on (`python eval.py ... data.external=true recalibrate.enabled=true`).
"""

from __future__ import annotations

import copy
import math

import torch

from lesion.screening.evaluation import screening_report
from lesion.screening.predictions import Predictions
from lesion.screening.reports import metric_cell
from lesion.stats.calibration import TEMPERATURE_BOUNDS, fit_platt
from lesion.stats.operating_point import choose_operating_point

ROWS = (
    ("AUROC", "test/auroc"),
    ("sensitivity at the threshold", "test_op/recall"),
    ("specificity at the threshold", "test_op/specificity"),
    ("ECE of P(malignant)", "test_calibration/ece_after"),
    ("threshold", "threshold"),
    ("temperature", "temperature"),
    ("Platt a", "platt_a"),
    ("Platt b", "platt_b"),
)


def fit_binary_temperature(logits: torch.Tensor, malignant: torch.Tensor, y: torch.Tensor) -> float:
    """The temperature minimising the binary NLL of P(malignant) = the malignant classes' softmax(logits / T) sum
    against malignant-or-not labels (what a benign/malignant site can refit), within TEMPERATURE_BOUNDS."""
    logits, y = logits.detach().double(), y.detach().double()
    low, high = (math.log(b) for b in TEMPERATURE_BOUNDS)
    grid = torch.linspace(low, high, 400, dtype=torch.float64)

    def nll(log_t: torch.Tensor) -> torch.Tensor:
        p = (logits / log_t.exp()).softmax(-1)[:, malignant].sum(-1).clamp(1e-12, 1 - 1e-12)
        return -(y * p.log() + (1 - y) * (1 - p).log()).mean()

    return float(grid[torch.stack([nll(t) for t in grid]).argmin()].exp())


def stratified_halves(y: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of a `fraction` part (refit) and the rest (held), stratified by malignant or not, seeded."""
    generator = torch.Generator().manual_seed(seed)
    refit, held = [], []
    for value in (0, 1):
        rows = torch.nonzero(y.flatten().long() == value).flatten()
        rows = rows[torch.randperm(len(rows), generator=generator)]
        cut = round(fraction * len(rows))
        refit.append(rows[:cut])
        held.append(rows[cut:])
    return torch.cat(refit).sort().values, torch.cat(held).sort().values


def subset(preds: Predictions, rows: torch.Tensor) -> Predictions:
    return Predictions(
        image_ids=[preds.image_ids[i] for i in rows.tolist()],
        labels=preds.labels[rows],
        logits=preds.logits[rows],
        y_malignant=preds.y_malignant[rows],
        binary_labels=preds.binary_labels,
    )


def refit_operating_point(
    model, local: Predictions, target_sensitivity: float, confidence: float
) -> tuple[object, dict]:
    """A copy of `model` whose calibration (the Platt map at the stored temperature when the model has one, else the
    temperature of P(malignant) itself: the only labels a benign/malignant site has) and lower-bound threshold are
    refitted on `local` predictions, and the rule that chose the threshold."""
    if int(local.y_malignant.sum()) == 0 or int((local.y_malignant == 0).sum()) == 0:
        raise ValueError("refitting the operating point needs malignant and benign local images")
    site = copy.deepcopy(model)
    calibrator = (model.deployment.operating_point or {}).get("calibrator", "temperature")
    if calibrator == "platt":
        raw = model.scores(local.logits, platt=False)[1]
        site.deployment.platt.copy_(torch.tensor(fit_platt(raw, local.y_malignant), dtype=torch.float64))
    else:
        site.deployment.temperature.fill_(fit_binary_temperature(local.logits, model.malignant_mask, local.y_malignant))
    p = local.p_malignant(site)
    chosen = choose_operating_point(p, local.y_malignant, target_sensitivity, "lower_bound", confidence)
    site.deployment.threshold.fill_(chosen["threshold"])
    site.deployment.calibrated.fill_(True)
    site.deployment.operating_point = chosen | {"site_refit_images": len(local.labels), "calibrator": calibrator}
    site.deployment.operating_point |= {
        "platt_a": float(site.deployment.platt[0]),
        "platt_b": float(site.deployment.platt[1]),
    }
    return site, chosen | {"calibrator": calibrator}


def recalibrate(model, external: Predictions, settings: dict, resamples: int = 1000) -> tuple[object, dict]:
    """The site-specific model (calibration and lower-bound threshold refitted on the refit part) and the report:
    `external_before/...` and `external_after/...` on the held part, `recalibration/...` about the refit."""
    refit_rows, held_rows = stratified_halves(external.y_malignant, settings["fraction"], settings["seed"])
    refit, held = subset(external, refit_rows), subset(external, held_rows)
    if int(refit.y_malignant.sum()) == 0 or int(held.y_malignant.sum()) == 0:
        raise ValueError("recalibration needs malignant images in both parts: the external set has too few")
    site, chosen = refit_operating_point(model, refit, settings["target_sensitivity"], settings["confidence"])
    report = {f"recalibration/{k}": v for k, v in chosen.items()}
    report |= {"recalibration/refit_images": len(refit_rows), "recalibration/held_images": len(held_rows)}
    for state, m in (("before", model), ("after", site)):
        values = screening_report(m, held, "test", resamples)
        report |= {f"external_{state}/{k}": v for k, v in values.items()}
    return site, report


def recalibration_table(in_domain: dict, report: dict) -> str:
    """Markdown: in-domain test, external held part before and after the local refit."""
    before = {k.removeprefix("external_before/"): v for k, v in report.items() if k.startswith("external_before/")}
    after = {k.removeprefix("external_after/"): v for k, v in report.items() if k.startswith("external_after/")}
    lines = [
        "# Local recalibration",
        "",
        f"{'Platt map' if report.get('recalibration/calibrator') == 'platt' else 'Temperature'} and threshold "
        f"refitted (lower-bound rule, target sensitivity "
        f"{report['recalibration/target_sensitivity']:.2f} at {report['recalibration/confidence']:.0%}) on "
        f"{report['recalibration/refit_images']} external images ({report['recalibration/val_positives']} malignant; "
        f"bound reached {report['recalibration/sensitivity_lower_bound']:.3f}); figures on the other "
        f"{report['recalibration/held_images']}, never refitted on.",
        "",
        "| metric | in-domain test | external, stored operating point | external, refitted locally |",
        "|---|---|---|---|",
    ]
    for label, key in ROWS:
        lines.append(f"| {label} | " + " | ".join(metric_cell(v, key) for v in (in_domain, before, after)) + " |")
    return "\n".join(lines) + "\n"
