"""Screening evaluation: predictions, the calibrated operating point, and the metrics at it with bootstrap CIs."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from torch.utils.data import DataLoader

from lesion.models.module import LesionClassifier
from lesion.screening.calibration import (
    PLATT_IDENTITY,
    binary_calibration_scores,
    calibration_scores,
    fit_platt,
    fit_temperature,
)
from lesion.screening.metrics import diagnosis_collection, screening_metrics
from lesion.screening.operating_point import balanced_accuracy_ci, bootstrap_ci, choose_operating_point


@dataclass
class Predictions:
    """One split's model outputs, aligned with its image ids."""

    image_ids: list[str]
    labels: torch.Tensor
    logits: torch.Tensor
    y_malignant: torch.Tensor
    binary_labels: bool = False  # labels are benign/malignant of an external set, not the model's classes
    features: torch.Tensor | None = None  # pooled features of the identity view, when predict() was asked for them

    def probs(self, temperature: float = 1.0) -> torch.Tensor:
        return (self.logits / temperature).softmax(dim=-1)

    def p_malignant(self, model: LesionClassifier, calibrated: bool = True) -> torch.Tensor:
        """P(malignant), calibrated with the model's stored temperature and Platt map; `calibrated=False`: as the
        network gives it (temperature 1, no Platt map)."""
        if not calibrated:
            return model.malignant_probability(self.probs(1.0), platt=False)
        return model.malignant_probability(self.probs(float(model.temperature)))


def predict(
    model: LesionClassifier, loader: DataLoader, trainer: L.Trainer, binary_labels: bool = False, features: bool = False
) -> Predictions:
    """binary_labels: the loader's labels are benign (0) / malignant (1), e.g. an external set scored through the
    P(malignant) of a multiclass model. features: also keep the pooled features of each image's identity view, from
    the same forward passes (the quality gate's `ood: residual` is fitted on them)."""
    from lesion.serving.quality import captured_features

    with captured_features(model) if features else nullcontext(lambda _: None) as captured:
        batches = trainer.predict(model, dataloaders=loader)
        pooled = captured(len(batches))
    predictions = predictions_of(batches, model, binary_labels)
    predictions.features = pooled
    return predictions


def predictions_of(batches: list[dict], model: LesionClassifier, binary_labels: bool = False) -> Predictions:
    """Predictions from per-batch outputs with "image_id", "label" and "logits" (predict_step's, or the
    `model.test_outputs` that trainer.test leaves)."""
    labels = torch.cat([b["label"] for b in batches]).cpu()
    return Predictions(
        image_ids=[i for b in batches for i in b["image_id"]],
        labels=labels,
        logits=torch.cat([b["logits"] for b in batches]).cpu(),
        y_malignant=labels.long().cpu() if binary_labels else model.is_malignant(labels).cpu(),
        binary_labels=binary_labels,
    )


def calibrate(
    model: LesionClassifier,
    val: Predictions,
    target_sensitivity: float = 0.8,
    method: str = "lower_bound",
    confidence: float = 0.95,
    calibrator: str = "platt",
) -> dict:
    """Fit the temperature of the class logits on validation and (`calibrator="platt"`) a Platt map of the resulting
    P(malignant), then the threshold for `target_sensitivity` on calibrated P(malignant)
    (`lesion.screening.operating_point.choose_operating_point`); all are stored in the model's buffers and the rules
    that chose them in `model.operating_point`, so its checkpoints carry them.

    Why Platt on top of the temperature: P(malignant) is a sum of softmax outputs, and one temperature fitted to the
    7-class NLL leaves that sum miscalibrated (bench/calibrators.py: val ECE of P(malignant) 0.087 with the temperature,
    0.029 with a Platt map). The map is increasing, so rankings (AUROC) stay the temperature's."""
    if calibrator not in CALIBRATORS:
        raise ValueError(f"operating_point.calibrator must be one of {CALIBRATORS}, got {calibrator!r}")
    model.temperature.fill_(fit_temperature(val.logits, val.labels))
    temperature = float(model.temperature)  # as stored: the scores every later decision sees
    raw = model.malignant_probability(val.probs(temperature), platt=False)
    platt = fit_platt(raw, val.y_malignant) if calibrator == "platt" else PLATT_IDENTITY
    model.platt.copy_(torch.tensor(platt, dtype=torch.float64))
    p = val.p_malignant(model)
    chosen = choose_operating_point(p, val.y_malignant, target_sensitivity, method, confidence)
    chosen |= {"calibrator": calibrator, "platt_a": platt[0], "platt_b": platt[1]}
    model.threshold.fill_(chosen["threshold"])
    model.calibrated.fill_(True)
    model.operating_point = chosen
    posthoc = {}
    if model.hparams.get("posthoc_adjustment") == "val" and val.logits.shape[1] > 2:
        posthoc = {"posthoc_tau": fit_posthoc_tau(model, val)}
    at_threshold = screening_metrics(p, val.y_malignant, chosen["threshold"])
    return (
        {
            "temperature": temperature,
            "threshold": chosen["threshold"],
            "target_sensitivity": target_sensitivity,
            "val_op/recall": at_threshold["recall"],
            "val_op/specificity": at_threshold["specificity"],
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
    temperature, threshold = float(model.temperature), float(model.threshold)
    p = test.p_malignant(model)
    report: dict = {"threshold": threshold, "temperature": temperature}
    report |= {"platt_a": float(model.platt[0]), "platt_b": float(model.platt[1])}
    report |= {f"{split}/{k}": v for k, v in screening_metrics(p, test.y_malignant, 0.5).items()}
    report |= {f"{split}_op/{k}": v for k, v in screening_metrics(p, test.y_malignant, threshold).items()}
    if resamples:
        for name, (low, high) in bootstrap_ci(p, test.y_malignant, threshold, resamples, level).items():
            report[f"{split}_op/{name}_ci"] = [low, high]
    num_classes = 2 if test.binary_labels else len(model.hparams.class_names)  # multiclass figures need its labels
    for state, t in (("before", 1.0), ("after", temperature)):
        scores = binary_calibration_scores(test.p_malignant(model, calibrated=state == "after"), test.y_malignant, bins)
        report |= {f"{split}_calibration/{name}_{state}": value for name, value in scores.items()}
        if num_classes > 2:  # the top-label figures of the 7-class probabilities, under their own names
            scores = calibration_scores(test.probs(t), test.labels, bins)
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


def subset(predictions_ids: list[str], labels: torch.Tensor, max_images: int | None, seed: int = 0) -> list[int]:
    """Row indices of a class-stratified random subset of at most `max_images` (all rows when None)."""
    if not max_images or max_images >= len(predictions_ids):
        return list(range(len(predictions_ids)))
    generator = torch.Generator().manual_seed(seed)
    share = max_images / len(predictions_ids)
    chosen = []
    for value in labels.unique():
        rows = torch.nonzero(labels == value).flatten()
        take = max(1, round(share * len(rows)))
        chosen += rows[torch.randperm(len(rows), generator=generator)[:take]].tolist()
    return sorted(chosen)


def robustness_table(
    model: LesionClassifier,
    datamodule,
    trainer: L.Trainer,
    test: Predictions,
    severities: list[int],
    max_images: int | None = None,
    split: str = "test",
) -> pd.DataFrame:
    """AUROC, sensitivity and specificity at the stored threshold under each degradation and severity, and the
    drop from clean, on the same (optionally subsampled, class-stratified) images."""
    from lesion.data.datamodule import LesionDataset
    from lesion.screening.robustness import DEGRADATIONS, DegradedReader

    rows = subset(test.image_ids, test.y_malignant, max_images)
    ids = [test.image_ids[i] for i in rows]
    labels = test.labels[rows]
    threshold = float(model.threshold)
    results = []
    for name in DEGRADATIONS:
        for severity in [0, *severities]:
            if severity == 0 and results:
                results.append(results[0] | {"degradation": name})
                continue
            dataset = LesionDataset(
                ids,
                labels,
                DegradedReader(datamodule.reader(), name, severity, datamodule.transforms.to_input_size),
                datamodule.transforms,
                train=False,
            )
            loader = DataLoader(dataset, batch_size=datamodule.eval_batch_size, num_workers=datamodule.num_workers)
            p = predict(model, loader, trainer).p_malignant(model)
            m = screening_metrics(p, test.y_malignant[rows], threshold)
            results.append(
                {
                    "degradation": name,
                    "severity": severity,
                    "auroc": m["auroc"],
                    "sensitivity": m["recall"],
                    "specificity": m["specificity"],
                }
            )
    table = pd.DataFrame(results)
    clean = table[table["severity"] == 0].iloc[0]
    for metric in ("auroc", "sensitivity", "specificity"):
        table[f"{metric}_drop"] = clean[metric] - table[metric]
    table.insert(2, "images", len(ids))
    return table


def skin_tone_frame(datamodule, image_ids: list[str]) -> pd.DataFrame:
    """The split's metadata for `image_ids`, with `ita` estimated from the images when no Fitzpatrick column exists."""
    from tqdm.auto import tqdm

    from lesion.screening.fairness import FITZPATRICK, ita_degrees

    frame = pd.concat(datamodule.frames.values()).drop_duplicates("image_id").set_index("image_id")
    frame = frame.loc[image_ids].reset_index()
    if not any(c in frame for c in FITZPATRICK):
        read = datamodule.reader()
        frame["ita"] = [ita_degrees(read(i)) for i in tqdm(image_ids, desc="skin tone (ITA)", unit="img")]
    return frame


def store_operating_point(ckpt_path: str, model: LesionClassifier) -> None:
    """Write the model's temperature, Platt map, threshold and calibrated flag into an existing checkpoint file."""
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)  # our own checkpoint, written by this run
    for name in ("temperature", "platt", "threshold", "calibrated", "posthoc_tau"):
        ckpt["state_dict"][name] = getattr(model, name).detach().cpu()
    ckpt["operating_point"] = dict(model.operating_point or {})
    ckpt["quality"] = model.quality
    torch.save(ckpt, ckpt_path)


def operating_point_after_fit(
    model: LesionClassifier, datamodule, trainer: L.Trainer, best: str, operating_point: dict, quality: dict
) -> dict:
    """Calibrate on val and choose the threshold (conf/train.yaml `operating_point`), fit the quality gate (`quality`,
    when enabled), store them in the best checkpoint, and return the val figures at them (with CIs: the study
    comparison puts val and test side by side)."""
    from lesion.serving.quality import fit_on_datamodule, fits_features

    val = predict(model, datamodule.val_dataloader(), trainer, features=fits_features(quality))
    op = operating_point
    info = calibrate(model, val, op["target_sensitivity"], op["method"], op["confidence"], op["calibrator"])
    if quality["enabled"]:
        model.quality = fit_on_datamodule(model, datamodule, val, quality)
    report = screening_report(model, val, "val", op["bootstrap_resamples"])
    info |= {k: v for k, v in report.items() if "calibration" not in k}
    if best:
        store_operating_point(best, model)
    return info


def test_at_operating_point(model: LesionClassifier, operating_point: dict) -> tuple[dict, Predictions]:
    """The test report at the stored operating point from the outputs of the `trainer.test` just run (no second pass
    over the test split), without the `test/` keys (trainer.test gave those, on the same calibrated scores), and the
    test predictions."""
    if not model.test_outputs:
        raise RuntimeError("test_at_operating_point reads the outputs of trainer.test: run it first")
    test = predictions_of(model.test_outputs, model)
    report = screening_report(model, test, resamples=operating_point["bootstrap_resamples"])
    return {k: v for k, v in report.items() if not k.startswith("test/")}, test


def training_splits(model: LesionClassifier, ckpt_path: str | list) -> list[pd.DataFrame]:
    """image_id/split tables of the run(s) that trained the model, one per member for an ensemble: stored in the
    checkpoint (train.py), else the run's splits.csv beside its checkpoints/ folder; none when neither exists."""
    stored = model.split_ids if isinstance(model.split_ids, list) else [model.split_ids]
    paths = getattr(model, "member_paths", None) or (ckpt_path if isinstance(ckpt_path, list) else [ckpt_path])
    tables = []
    for i, ids in enumerate(stored):
        run_splits = Path(paths[i]).resolve().parent.parent / "splits.csv" if i < len(paths) else None
        if ids:
            rows = [(image_id, split) for split, names in ids.items() for image_id in names]
            tables.append(pd.DataFrame(rows, columns=["image_id", "split"]))
        elif run_splits is not None and run_splits.is_file():
            tables.append(pd.read_csv(run_splits, dtype=str))
    return tables


def refuse_leaks(test_ids: list[str], splits: list[pd.DataFrame], ckpt_path) -> None:
    """A clear error when test images were used to train or tune (val: early stopping, calibration) the model."""
    seen = set()
    for table in splits:
        seen |= set(table.loc[table["split"].isin(["train", "val"]), "image_id"].astype(str))
    leaked = sorted(set(map(str, test_ids)) & seen)
    if leaked:
        raise ValueError(
            f"{len(leaked)} of the {len(test_ids)} test images were used to train or tune {ckpt_path} (its training "
            f"run's train/val splits), e.g. {', '.join(leaked[:10])}: their figures would be optimistic. Evaluate on "
            "the run's own test split (the default when data= is not given) or on data the run never saw"
        )
