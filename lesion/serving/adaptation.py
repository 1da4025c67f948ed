"""Adapting a trained model to a site's camera and population: local photos in three grouped parts (fine-tuning,
calibration, test), how long to fine-tune chosen by grouped folds of the fine-tuning part, then calibration, certified
threshold and quality gate fitted on local photos the fine-tuning never saw (`python adapt.py`)."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from tqdm.auto import tqdm

from lesion.models.adaptation import Strategy, fine_tune, reestimate_batchnorm
from lesion.models.features import pooled_features
from lesion.models.loading import eval_transforms
from lesion.screening.evaluation import screening_report
from lesion.screening.predictions import Predictions
from lesion.screening.recalibration import refit_operating_point
from lesion.stats.quality import feature_residual, fit_quality, widen_feature_residual

log = logging.getLogger(__name__)
# The image measures of a site's gate: the more permissive of the source's threshold and the site's own, so neither
# the photos the network was trained on nor the site's ordinary photos are refused for these reasons.
LENIENT = {"min_sharpness": min, "max_highlights": max, "max_shadows": max}
SITE_COMPONENTS = 32  # directions of the site's photos added to the source's out-of-distribution reference


@dataclass
class LocalPhotos:
    """A site's labelled photos: resized to the model's input (what the quality gate measures), preprocessed (what the
    network sees before augmentation), benign/malignant labels and their patient or lesion groups."""

    image_ids: list[str]
    sized: list[np.ndarray]
    inputs: list[np.ndarray]
    y: np.ndarray
    groups: np.ndarray

    def subset(self, rows) -> LocalPhotos:
        rows = list(np.asarray(rows, int))
        pick = [self.image_ids[i] for i in rows], [self.sized[i] for i in rows], [self.inputs[i] for i in rows]
        return LocalPhotos(*pick, self.y[rows], self.groups[rows])

    def __len__(self) -> int:
        return len(self.y)

    @staticmethod
    def concat(parts: list[LocalPhotos]) -> LocalPhotos:
        return LocalPhotos(
            [i for p in parts for i in p.image_ids],
            [s for p in parts for s in p.sized],
            [x for p in parts for x in p.inputs],
            np.concatenate([p.y for p in parts]),
            np.concatenate([p.groups for p in parts]),
        )

    def counts(self) -> dict:
        return {"images": len(self), "malignant": int(self.y.sum()), "groups": int(len(set(self.groups.tolist())))}


def read_local(datamodule, split: str, model) -> LocalPhotos:
    """One split of a datamodule as LocalPhotos (labels: the datamodule's malignant classes or not)."""
    transforms = eval_transforms(model)
    frame = datamodule.frames[split]
    read = datamodule.reader()
    sized = [transforms.to_input_size(read(i)) for i in tqdm(frame["image_id"], desc=f"reading {split}", unit="img")]
    inputs = [transforms.preprocess(image=image)["image"] for image in sized]
    malignant = [datamodule.classes.index(c) for c in datamodule.malignant]
    group = datamodule.group_column
    groups = frame[group].fillna(frame["image_id"]) if group and group in frame else frame["image_id"]
    y = np.isin(frame["label"].to_numpy(int), malignant).astype(np.int64)
    return LocalPhotos(frame["image_id"].astype(str).tolist(), sized, inputs, y, groups.astype(str).to_numpy())


class Adapter:
    """Adapts copies of a source model to local photos with one strategy (lesion.models.adaptation.Strategy)."""

    def __init__(self, model, strategy: Strategy, folds: int = 4, seed: int = 0, batch_size: int = 32):
        if hasattr(model, "members"):
            raise ValueError("adapt one checkpoint, not an ensemble: adapt each member, or recalibrate the ensemble")
        self.model, self.strategy, self.folds, self.seed, self.batch_size = (
            model.eval(),
            strategy,
            folds,
            seed,
            batch_size,
        )
        self.transforms = eval_transforms(model)

    def batch(self, photos: LocalPhotos, rows, seed: int | None = None) -> torch.Tensor:
        """The network's input for `rows`: augmented as the model was trained when a seed is given, else evaluated."""
        if seed is None:
            return torch.stack([self.transforms.finish(photos.inputs[r], False) for r in rows])
        return torch.stack([self.transforms.finish(photos.inputs[r], True, seed=seed + j) for j, r in enumerate(rows)])

    def chunks(self, photos: LocalPhotos) -> list[range]:
        return [range(i, min(i + self.batch_size, len(photos))) for i in range(0, len(photos), self.batch_size)]

    @torch.no_grad()
    def logits(self, model, photos: LocalPhotos) -> torch.Tensor:
        """The model's logits under its own test-time augmentation (the score its threshold is certified on)."""
        model.eval()
        return torch.cat([model(self.batch(photos, rows)).float() for rows in self.chunks(photos)])

    def predictions(self, model, photos: LocalPhotos) -> Predictions:
        y = torch.as_tensor(photos.y)
        return Predictions(photos.image_ids, y, self.logits(model, photos), y, binary_labels=True)

    def adapted(self, photos: LocalPhotos, epochs: int, after_epoch=None) -> object:
        """A copy of the source model adapted to `photos`: BatchNorm statistics (when the strategy says), then
        `epochs` of fine-tuning; `after_epoch(model, epoch)` runs before the first (epoch 0) and after each."""
        model = copy.deepcopy(self.model)
        net = model.eval_net
        if self.strategy.bn_stats:
            reestimate_batchnorm(net, [self.batch(photos, rows) for rows in self.chunks(photos)])
        if after_epoch:
            after_epoch(model, 0)
        if epochs:
            fine_tune(
                net,
                model.malignant_mask,
                lambda rows, seed: self.batch(photos, rows, seed),
                photos.y,
                self.strategy,
                epochs,
                self.seed,
                lambda epoch: after_epoch(model, epoch) if after_epoch else None,
                bool(model.hparams.get("channels_last")),
            )
        return model.eval()

    def choose_epochs(self, photos: LocalPhotos) -> tuple[int, list[float]]:
        """How long to fine-tune: the epoch count (0 to strategy.max_epochs) whose mean AUROC over grouped, stratified
        folds of `photos` is highest (ties: fewer epochs); the mean curve."""
        if not self.strategy.fine_tunes:
            return 0, []
        folds = min(self.folds, int(photos.y.sum()), int((1 - photos.y).sum()))
        if folds < 2:
            log.warning("too few local malignant or benign photos for folds: fine-tuning %d epochs", 1)
            return 1, []
        split = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=self.seed)
        curves = []
        for fit_rows, held_rows in split.split(np.zeros(len(photos)), photos.y, photos.groups):
            held = photos.subset(held_rows)
            if held.y.min() == held.y.max():
                continue
            curve = []

            def score(model, epoch, held=held, curve=curve):  # one view: a ranking, at a quarter of flip TTA's cost
                with torch.no_grad():
                    logits = torch.cat([model.eval_net(self.batch(held, rows)) for rows in self.chunks(held)])
                curve.append(roc_auc_score(held.y, logits.float().softmax(-1)[:, model.malignant_mask].sum(-1)))

            self.adapted(photos.subset(fit_rows), self.strategy.max_epochs, score)
            curves.append(curve)
        mean = np.mean(curves, axis=0)
        return int(np.argmax(mean)), mean.round(4).tolist()

    def fit_site(self, train: LocalPhotos, calibration: LocalPhotos, target: float, confidence: float, quality: dict):
        """The site model: adapted on `train`, its calibration and lower-bound threshold refitted on `calibration`
        (never seen by the fine-tuning), its quality gate refitted on local photos; and what was done."""
        epochs, curve = self.choose_epochs(train)
        adapted = self.adapted(train, epochs)
        site, chosen = refit_operating_point(adapted, self.predictions(adapted, calibration), target, confidence)
        if quality.get("enabled", True):
            site.deployment.quality = self.site_gate(site, train, calibration, quality)
        info = {"strategy": dict(self.strategy.__dict__), "epochs": epochs, "fold_auroc_by_epoch": curve}
        return site, info | {"operating_point": chosen}

    def site_gate(self, site, train: LocalPhotos, calibration: LocalPhotos, settings: dict) -> dict:
        """The quality gate refitted on the site's photos: image measures from its fine-tuning photos (the more
        permissive of them and the source's), the out-of-distribution reference from the adapted network's features
        of those photos, its threshold from the calibration photos'."""
        features = {
            name: torch.cat([pooled_features(site, self.batch(photos, rows)) for rows in self.chunks(photos)])
            for name, photos in (("train", train), ("val", calibration))
        }
        cal_logits = self.logits(site, calibration)
        gate = fit_quality(train.sized, lambda image: image, cal_logits, settings, len(train), features)
        source = self.model.deployment.quality or {}
        if source.get("region", 1.0) == gate["region"]:
            gate |= {k: pick(gate[k], source[k]) for k, pick in LENIENT.items() if k in source}
        reference = "site photos"
        if "feature_residual" in source and "feature_residual" in gate and self.keeps_features(site, train):
            # The network's features are the source's: its reference, widened by the site's photos, keeps refusing
            # what was unlike the source's images (a site reference alone would accept much of it)
            widened = widen_feature_residual(source["feature_residual"], features["train"], SITE_COMPONENTS)
            limit = float(np.percentile(feature_residual(features["val"], widened).numpy(), settings["ood_percentile"]))
            widened["max_residual"] = max(limit, source["feature_residual"]["max_residual"])
            gate["feature_residual"], reference = widened, "source reference widened by site photos"
        gate["fitted_on"] |= {"site": True, "source_thresholds_kept": bool(source), "ood_reference": reference}
        return gate

    @torch.no_grad()
    def keeps_features(self, site, photos: LocalPhotos) -> bool:
        """Whether the adapted network's pooled features are the source's (recalibration, the classifier alone)."""
        batch = self.batch(photos, range(min(len(photos), self.batch_size)))
        return torch.allclose(pooled_features(site, batch), pooled_features(self.model, batch), atol=1e-5)

    def report(self, model, photos: LocalPhotos, resamples: int = 1000, level: float = 0.95) -> dict:
        """The screening report of `model` on local photos (test figures at its stored threshold, with CIs)."""
        return screening_report(model, self.predictions(model, photos), "test", resamples, level)


def adaptation_table(before: dict, after: dict, info: dict, counts: dict) -> str:
    """Markdown: the source model and the site model on the same local test photos, and what the site model learnt
    from."""
    from lesion.screening.reports import metric_cell

    rows = [
        ("AUROC", "test/auroc"),
        ("sensitivity at the threshold", "test_op/recall"),
        ("specificity at the threshold", "test_op/specificity"),
        ("ECE of P(malignant)", "test_calibration/ece_after"),
        ("threshold", "threshold"),
    ]
    op = info["operating_point"]
    parts = ", ".join(
        f"{name} {c['images']} ({c['malignant']} malignant, {c['groups']} groups)" for name, c in counts.items()
    )
    lines = [
        f"# Adaptation to a site: strategy `{info['strategy']['name']}`",
        "",
        f"Local photos: {parts}. Fine-tuned {info['epochs']} epochs (chosen by grouped folds of the fine-tuning part: "
        f"mean fold AUROC by epoch {info['fold_auroc_by_epoch'] or 'n/a'}); threshold certified on the calibration "
        f"part for sensitivity {op['target_sensitivity']:.2f} at {op['confidence']:.0%} (lower bound reached "
        f"{op['sensitivity_lower_bound']:.3f} from {op['val_positives']} malignant photos).",
        "",
        "| on the local test part | source model, its stored threshold | site model |",
        "|---|---|---|",
    ]
    lines += [f"| {label} | {metric_cell(before, key)} | {metric_cell(after, key)} |" for label, key in rows]
    return "\n".join(lines) + "\n"


def local_splits(parts: dict[str, LocalPhotos]) -> pd.DataFrame:
    """image_id/split of the local parts (fine-tuning: train, calibration: val, test), as splits.csv files are."""
    names = {"fine_tune": "train", "calibration": "val", "test": "test"}
    return pd.concat([pd.DataFrame({"image_id": p.image_ids, "split": names[k]}) for k, p in parts.items()])


def site_adaptation(ckpt_path) -> dict | None:
    """What adapt.py stored in a site checkpoint (None for any other checkpoint)."""
    return torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True).get("adaptation")


def site_section(adaptation: dict) -> str:
    """The model card's account of a site adaptation: where the model came from, what it learnt from, and the source
    and site models on the same local test photos."""
    from lesion.screening.reports import metric_cell

    counts = adaptation["counts"]
    data = adaptation.get("data") or {}
    source = adaptation.get("source_on_local_test") or {}
    lines = [
        "### Adaptation to a site",
        "",
        f"- Source checkpoint: `{adaptation['source_checkpoint']}`; strategy `{adaptation['strategy']['name']}` "
        f"({adaptation['epochs']} epochs of fine-tuning, chosen by grouped folds), {adaptation.get('date', '')}.",
        f"- Local data: `{data.get('name')}` at `{data.get('root')}`; "
        + ", ".join(f"{k} {c['images']} photos ({c['malignant']} malignant)" for k, c in counts.items())
        + ". Calibration, threshold and quality gate were fitted on the calibration part, which fine-tuning never saw.",
        "",
        "| on the local test part | source model, its stored threshold | this site model |",
        "|---|---|---|",
    ]
    after = adaptation.get("site_on_local_test") or {}
    for label, key in (
        ("AUROC", "test/auroc"),
        ("sensitivity", "test_op/recall"),
        ("specificity", "test_op/specificity"),
    ):
        lines.append(f"| {label} | {metric_cell(source, key)} | {metric_cell(after, key)} |")
    return "\n".join(lines) + "\n"
