"""Screening evaluation: the calibrated operating point, the metrics at it with bootstrap CIs, and leak checks."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch

from lesion.models.module import LesionClassifier
from lesion.screening.predictions import Predictions
from lesion.stats.calibration import (
    PLATT_IDENTITY,
    binary_calibration_scores,
    calibration_scores,
    fit_platt,
    fit_temperature,
)
from lesion.stats.metrics import diagnosis_collection, screening_metrics
from lesion.stats.operating_point import balanced_accuracy_ci, bootstrap_ci, choose_operating_point

log = logging.getLogger(__name__)


def calibrate(
    model: LesionClassifier,
    val: Predictions,
    target_sensitivity: float = 0.8,
    method: str = "lower_bound",
    confidence: float = 0.95,
    calibrator: str = "platt",
    split: str = "val",
) -> dict:
    """Fit the temperature of the class logits on validation and (`calibrator="platt"`) a Platt map of the resulting
    P(malignant), then the threshold for `target_sensitivity` on calibrated P(malignant)
    (`lesion.stats.operating_point.choose_operating_point`); all are stored in `model.deployment` (buffers, and the
    rules that chose them in `operating_point`), so its checkpoints carry them. `split`: the split whose predictions
    `val` holds (val, or a separate calibration split), named by the returned `<split>_op/` figures and by
    `model.deployment.operating_point["calibration_split"]`.

    Why Platt on top of the temperature: P(malignant) is a sum of softmax outputs, and one temperature fitted to the
    7-class NLL leaves that sum miscalibrated (bench/calibrators.py: val ECE of P(malignant) 0.087 with the temperature,
    0.029 with a Platt map). The map is increasing, so rankings (AUROC) stay the temperature's."""
    if calibrator not in CALIBRATORS:
        raise ValueError(f"operating_point.calibrator must be one of {CALIBRATORS}, got {calibrator!r}")
    model.deployment.temperature.fill_(fit_temperature(val.logits, val.labels))
    temperature = float(model.deployment.temperature)  # as stored: the scores every later decision sees
    raw = model.scores(val.logits, platt=False)[1]
    platt = fit_platt(raw, val.y_malignant) if calibrator == "platt" else PLATT_IDENTITY
    model.deployment.platt.copy_(torch.tensor(platt, dtype=torch.float64))
    p = val.p_malignant(model)
    chosen = choose_operating_point(p, val.y_malignant, target_sensitivity, method, confidence)
    chosen |= {"calibrator": calibrator, "platt_a": platt[0], "platt_b": platt[1], "calibration_split": split}
    model.deployment.threshold.fill_(chosen["threshold"])
    model.deployment.calibrated.fill_(True)
    model.deployment.operating_point = chosen
    posthoc = {}
    if model.hparams.get("posthoc_adjustment") == "val" and val.logits.shape[1] > 2:
        posthoc = {"posthoc_tau": fit_posthoc_tau(model, val)}
    at_threshold = screening_metrics(p, val.y_malignant, chosen["threshold"])
    return (
        {
            "temperature": temperature,
            "threshold": chosen["threshold"],
            "target_sensitivity": target_sensitivity,
            f"{split}_op/recall": at_threshold["recall"],
            f"{split}_op/specificity": at_threshold["specificity"],
        }
        | {f"operating_point/{k}": v for k, v in chosen.items() if k not in ("threshold", "target_sensitivity")}
        | posthoc
    )


CALIBRATORS = ("platt", "temperature")
POSTHOC_TAUS = torch.arange(0, 1.501, 0.05)


def fit_posthoc_tau(model: LesionClassifier, val: Predictions) -> float:
    """The post-hoc adjustment tau (on POSTHOC_TAUS) that maximises val balanced accuracy of the 7-class decision;
    stored in `model.posthoc_tau` (ties: the smallest tau)."""
    accuracy = diagnosis_collection(val.logits.shape[1])["balanced_accuracy"]
    scores = [float(accuracy(val.logits.float() - tau * model.log_prior, val.labels)) for tau in POSTHOC_TAUS]
    tau = float(POSTHOC_TAUS[int(torch.tensor(scores).argmax())])
    model.posthoc_tau.fill_(tau)
    return tau


def screening_report(
    model: LesionClassifier,
    test: Predictions,
    split: str = "test",
    resamples: int = 1000,
    level: float = 0.95,
    bins: int = 15,
) -> dict:
    """Flat metrics: `<split>/…` at 0.5, `<split>_op/…` at the stored threshold (with CIs), calibration before/after."""
    temperature, threshold = float(model.deployment.temperature), float(model.deployment.threshold)
    p = test.p_malignant(model)
    report: dict = {"threshold": threshold, "temperature": temperature}
    report |= {"platt_a": float(model.deployment.platt[0]), "platt_b": float(model.deployment.platt[1])}
    report |= {f"{split}/{k}": v for k, v in screening_metrics(p, test.y_malignant, 0.5).items()}
    report |= {f"{split}_op/{k}": v for k, v in screening_metrics(p, test.y_malignant, threshold).items()}
    if resamples:
        for name, (low, high) in bootstrap_ci(p, test.y_malignant, threshold, resamples, level).items():
            report[f"{split}_op/{name}_ci"] = [low, high]
    num_classes = 2 if test.binary_labels else len(model.hparams.class_names)  # multiclass figures need its labels
    for state in ("before", "after"):
        probs, p_state = model.scores(test.logits, temperature=state == "after", platt=state == "after")
        scores = binary_calibration_scores(p_state, test.y_malignant, bins)
        report |= {f"{split}_calibration/{name}_{state}": value for name, value in scores.items()}
        if num_classes > 2:  # the top-label figures of the 7-class probabilities, under their own names
            scores = calibration_scores(probs, test.labels, bins)
            report |= {f"{split}_calibration_multiclass/{name}_{state}": value for name, value in scores.items()}
    if num_classes > 2:
        decision = model.diagnosis_logits(test.logits).softmax(-1)
        report[f"{split}/balanced_accuracy"] = float(
            diagnosis_collection(num_classes)(decision, test.labels)["balanced_accuracy"]
        )
        if resamples:
            ci = balanced_accuracy_ci(decision.argmax(-1), test.labels, resamples, level)
            report[f"{split}/balanced_accuracy_ci"] = list(ci)
    return report


def per_class_table(test: Predictions, class_names: list[str], model: LesionClassifier) -> pd.DataFrame:
    """Per-class sensitivity, precision and support for a diagnosis (multiclass) model, at its 7-class decision."""
    predicted = model.diagnosis_logits(test.logits).argmax(dim=-1)
    rows = []
    for i, name in enumerate(class_names):
        actual, called = test.labels == i, predicted == i
        tp = int((actual & called).sum())
        rows.append(
            {
                "class": name,
                "images": int(actual.sum()),
                "sensitivity": tp / max(int(actual.sum()), 1),
                "precision": tp / max(int(called.sum()), 1),
            }
        )
    return pd.DataFrame(rows)


def training_splits(model: LesionClassifier, ckpt_path: str | list) -> list[pd.DataFrame]:
    """image_id/split tables of the run(s) that trained the model, one per member for an ensemble (a site model: the
    source run's, then its local parts), with the group column (lesion_id, patient_id) where the run had one: stored in
    the checkpoint (train.py), else the run's splits.csv beside its checkpoints/ folder; none when neither exists."""
    stored, grouped = model.deployment.split_ids, model.deployment.split_groups
    stored = stored if isinstance(stored, list) else [stored]
    grouped = grouped if isinstance(grouped, list) else [grouped] * len(stored)
    paths = getattr(model, "member_paths", None) or (ckpt_path if isinstance(ckpt_path, list) else [ckpt_path])
    tables = []
    for i, ids in enumerate(stored):
        run_splits = Path(paths[i]).resolve().parent.parent / "splits.csv" if i < len(paths) else None
        if ids:
            rows = [(image_id, split) for split, names in ids.items() for image_id in names]
            table = pd.DataFrame(rows, columns=["image_id", "split"])
            groups = grouped[i] if i < len(grouped) else None
            if groups and [len(groups["groups"].get(s, [])) for s in ids] == [len(v) for v in ids.values()]:
                table[groups["column"]] = [g for split in ids for g in groups["groups"][split]]
            tables.append(table)
        elif run_splits is not None and run_splits.is_file():
            tables.append(pd.read_csv(run_splits, dtype=str))
    return tables


def refuse_leaks(test: pd.DataFrame, splits: list[pd.DataFrame], ckpt_path, own_split: bool = False) -> None:
    """A clear error when test images, or other images of their lesions or patients, were used to train or tune (val:
    early stopping, calibration) the model. Groups are compared where the training run's table and the test data have
    the same group column (lesion_id, patient_id): one lesion photographed twice can carry two image ids.
    `own_split`: the test split is the training run's own, as it carved or was given it; groups crossing its splits
    are then a warning (the run's figures were always these), image ids still an error."""
    ids = set(test["image_id"].astype(str))
    leaked: set[str] = set()
    shared: dict[str, set[str]] = {}  # group column -> groups both trained (or tuned) on and in the test data
    for table in splits:
        seen = table[table["split"].isin(["train", "val", "calibration"])]
        leaked |= ids & set(seen["image_id"].astype(str))
        for column in [c for c in table.columns if c not in ("image_id", "split") and c in test.columns]:
            both = set(test[column].dropna().astype(str)) & set(seen[column].dropna().astype(str))
            shared[column] = shared.get(column, set()) | both
    hit = test["image_id"].astype(str).isin(leaked)
    for column, groups in shared.items():
        hit |= test[column].astype(str).isin(groups)
    if not hit.any():
        return
    found = sorted(test.loc[hit, "image_id"].astype(str))
    by_group = "; ".join(f"{len(g)} {column} groups" for column, g in shared.items() if g)
    if own_split and not leaked:
        log.warning(
            "%d of the %d images of %s's own test split share a lesion or patient with its train/val splits (%s), "
            "e.g. %s: the split it was given crosses groups, so its test figures may be optimistic",
            len(found),
            len(test),
            ckpt_path,
            by_group,
            ", ".join(found[:10]),
        )
        return
    raise ValueError(
        f"{len(found)} of the {len(test)} test images were used to train or tune {ckpt_path} (its training run's "
        f"train/val splits: {len(leaked)} by image id{', ' + by_group + ' shared' if by_group else ''}), e.g. "
        f"{', '.join(found[:10])}: their figures would be optimistic (another photo of a training lesion or patient "
        "counts). Evaluate on the run's own test split (the default when data= is not given) or on data the run never "
        "saw; if two datasets' group ids only coincide by name, rename the column in one of them"
    )
