"""After fit, the one sequence train.py and eval.py both run: calibrate and choose the threshold, fit the quality gate,
score the test split, report val and test at the operating point, and store the operating point."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import lightning as L
import pandas as pd

from lesion.models.module import LesionClassifier
from lesion.screening.evaluation import calibrate, screening_report
from lesion.screening.predictions import Predictions, predict, write_predictions
from lesion.screening.quality import fit_on_datamodule
from lesion.stats.quality import fits_features
from lesion.stats.subgroups import aligned, subgroup_report

log = logging.getLogger("lesion")


def after_fit(
    model: LesionClassifier,
    datamodule,
    trainer: L.Trainer,
    settings: dict,
    test: Callable[[], Predictions],
    store: Callable[[dict], dict] | None = None,
) -> tuple[dict, Predictions]:
    """Calibrate and choose the threshold (`settings["operating_point"]`, conf/train.yaml) on the calibration split
    when the run carved one (data.calibration_fraction), else on val; fit the quality gate (`settings["quality"]`) on
    val; then score the test split (`test()`, called after calibration, so figures it logs are calibrated), report
    val and test at the operating point with CIs and per source / modality, and store the operating point
    (`store(report)`: train.py into the best checkpoint, eval.py into a calibrated copy; what it returns joins the
    report). Returns the report and the test predictions.

    settings: `operating_point`, `quality`, and optionally `bootstrap` ({resamples, level}), `calibration` ({bins}),
    `checkpoints_compared` (how many validated checkpoints val chose among; 1 when not given) and `predictions` (a
    predictions.csv path: each split's scores are written there as soon as they are calibrated, before any report);
    without them, `operating_point.bootstrap_resamples`, 95% intervals and 15 bins."""
    op, quality = settings["operating_point"], settings["quality"]
    stages = Stages()
    val = predict(model, datamodule.val_dataloader(), trainer, features=fits_features(quality))
    stages.done("val scored", len(val.image_ids))
    fitted_on, split = calibration_predictions(model, datamodule, trainer, val)
    if split != "val":  # val's own scores are reused: no pass (and "val scored" keeps its seconds)
        stages.done(f"{split} scored", len(fitted_on.image_ids))
    compared = int(settings.get("checkpoints_compared") or 1) if split == "val" else 1
    confidence = certified_confidence(op, compared)
    report = calibrate(model, fitted_on, op["target_sensitivity"], op["method"], confidence, op["calibrator"], split)
    model.deployment.operating_point |= {"confidence_asked": op["confidence"], "checkpoints_compared": compared}
    report |= {"operating_point/confidence_asked": op["confidence"], "operating_point/checkpoints_compared": compared}
    written = settings.get("predictions")
    if written:
        write_predictions(written, "val", val, model, append=False)
        if split != "val":
            write_predictions(written, split, fitted_on, model, append=True)
    stages.done("calibrated")
    if quality["enabled"]:
        model.deployment.quality = fit_on_datamodule(model, datamodule, val, quality)
        stages.done("quality gate fitted")
    declared = datamodule.declared_groups
    val_report = split_report(model, val, datamodule.frames["val"], "val", settings, declared)
    report |= {k: v for k, v in val_report.items() if "calibration" not in k}
    stages.done("val reported")
    tested = test()
    stages.done("test scored", len(tested.image_ids))
    if written:
        write_predictions(written, "test", tested, model, append=True)
    report |= split_report(model, tested, datamodule.frames["test"], "test", settings, declared)
    stages.done("test reported")
    if store is not None:
        report |= store(report) or {}
    return report | {f"after_fit_seconds/{stage}": seconds for stage, seconds in stages.seconds.items()}, tested


class Stages:
    """The seconds each step of after_fit took, each logged as it ends (with img/s for a scoring pass) and returned in
    the report as `after_fit_seconds/<step>`: every run keeps its own profile."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.last = time.perf_counter()

    def done(self, stage: str, images: int | None = None) -> None:
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        self.seconds[stage] = round(seconds, 1)
        rate = f" ({images / seconds:.1f} img/s)" if images else ""
        log.info("after fit: %s in %.0f s%s", stage, seconds, rate)


def split_report(
    model: LesionClassifier,
    predictions: Predictions,
    frame: pd.DataFrame | None,
    split: str,
    settings: dict,
    declared: tuple[str, ...] = (),
) -> dict:
    """A split's screening report at the stored operating point (lesion.screening.evaluation.screening_report) and,
    where the split's frame names sources or modalities, the same figures for each (lesion.stats.subgroups: a column
    the data `declared`, or one whose every part holds a handful of images)."""
    boot = settings.get("bootstrap") or {"resamples": settings["operating_point"].get("bootstrap_resamples", 1000)}
    resamples, level = boot["resamples"], boot.get("level", 0.95)
    bins = (settings.get("calibration") or {}).get("bins", 15)
    report = screening_report(model, predictions, split, resamples, level, bins)
    if frame is not None:
        rows = aligned(frame, predictions.image_ids)
        p = predictions.p_malignant(model)
        y, threshold = predictions.y_malignant, report["threshold"]
        report |= subgroup_report(p, y, threshold, rows, split, resamples, level, bins, declared)
    return report


def certified_confidence(op: dict, compared: int) -> float:
    """The level the threshold is certified at so that `operating_point.confidence` holds for the checkpoint chosen:
    as asked when the certifying split chose nothing (a calibration split, or one checkpoint), else corrected for the
    `compared` checkpoints val chose among (Bonferroni: each certified at 1 - (1 - confidence) / compared, so the chosen
    one misses with probability at most 1 - confidence whichever it is; bench/calibration_split.py measures it).
    `operating_point.correct_for_selection=false` turns the correction off (the promise then erodes with the choice)."""
    if compared <= 1 or not op.get("correct_for_selection", True) or op["method"] != "lower_bound":
        return op["confidence"]
    return 1 - (1 - op["confidence"]) / compared


def calibration_predictions(
    model: LesionClassifier, datamodule, trainer: L.Trainer, val: Predictions
) -> tuple[Predictions, str]:
    """The predictions the temperature, Platt map and threshold are fitted on, and their split: the calibration
    split's when the run carved one (data.calibration_fraction), else `val` (already scored), which chose the epoch."""
    split = getattr(datamodule, "calibration_split", "val")
    return (val if split == "val" else predict(model, datamodule.calibration_dataloader(), trainer)), split
