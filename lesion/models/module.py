"""LesionClassifier: a self-contained LightningModule (backbone, head, weighted loss, screening metrics)."""

from __future__ import annotations

import logging
import warnings

import lightning as L
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.warnings import PossibleUserWarning
from timm.data import Mixup
from timm.utils import ModelEmaV3
from torchmetrics.classification import BinaryStatScores

from lesion.models.activation_cache import run_suffix
from lesion.models.backbones import backbone_data_config, build_backbone
from lesion.models.deployment import Deployment
from lesion.models.optimizers import build_optimizer, build_scheduler
from lesion.models.tta import tta_logits, tta_mode
from lesion.stats.calibration import platt_scale
from lesion.stats.metrics import diagnosis_collection, screening_collection

SPLITS = ("train", "val", "test")
# Buffers of the decision set at fit start or calibration (the post-hoc prior): checkpoints written before one existed
# load with its default. The calibration and threshold are the Deployment's (lesion.models.deployment).
FITTED_BUFFERS = ("log_prior", "posthoc_tau")
log = logging.getLogger(__name__)


class LesionClassifier(L.LightningModule):
    """Classifies lesion images into `class_names`; P(malignant) sums the probabilities of `malignant` classes.

    Takes plain values only, so `LesionClassifier.load_from_checkpoint(path)` needs nothing else.
    class_weights: per-class loss weights (the study: [1, 10]), "balanced" (from the training split's label
    counts, resolved at fit start and stored in the checkpoint) or None.
    malignant_weight: when set, weight 1 for benign classes and this for malignant ones (any number of classes);
    it replaces class_weights, which must then be null or "balanced".
    optimizer, scheduler: conf/optimizer and conf/scheduler blocks (`lesion.models.optimizers`); None: Adam 1e-3.
    label_smoothing: of the training targets. mixup: timm `Mixup` arguments (mixup_alpha, cutmix_alpha, prob,
    switch_prob) for training batches, or None.
    ema_decay: keep an EMA of the weights (timm ModelEmaV3, with warmup), used for validation, test, prediction,
    checkpoints' consumers and export; None: off.
    posthoc_adjustment: tau of post-hoc logit adjustment (Menon et al., ICLR 2021) for the 7-class decision only:
    argmax of logits - tau * log(training prior) (balanced_accuracy, per-class tables); P(malignant) is unchanged.
    "val": tau is chosen at calibration, as the one maximising val balanced accuracy (grid 0 to 1.5), and stored.
    tta: test-time augmentation: outside fit's validation, logits are averaged over views, so test, calibration,
    eval.py, predict.py and export all score the same function. "flip" (or true): identity, horizontal, vertical and
    both flips; "dihedral": those and the same of the transposed image (8 views, twice the cost); false: one view.
    logit_adjustment: tau of the logit-adjusted loss (Menon et al., ICLR 2021): tau * log(class prior of the training
    split) is added to the logits inside the loss, so the network's own logits rank classes as if they were balanced.
    channels_last: NHWC memory format for the network and its inputs (a speed option).
    compile: `torch.compile` the network in place (parameter names, so checkpoints, stay the same).
    """

    def __init__(
        self,
        backbone: dict,
        class_names: list[str] = ("benign", "malignant"),
        malignant: list[str] = ("malignant",),
        class_weights: list[float] | str | None = None,
        optimizer: dict | None = None,
        scheduler: dict | None = None,
        malignant_weight: float | None = None,
        label_smoothing: float = 0.0,
        mixup: dict | None = None,
        ema_decay: float | None = None,
        logit_adjustment: float = 0.0,
        posthoc_adjustment: float | str = 0.0,
        tta: bool | str = False,
        channels_last: bool = False,
        data: dict | None = None,
        compile: bool = False,
    ):
        super().__init__()
        # In the checkpoint, not sent to the loggers: train.py logs the whole resolved config once (W&B `config`).
        self.save_hyperparameters(logger=False)
        tta_mode(tta)  # a wrong value fails here, not at the first test batch
        unknown = [m for m in malignant if m not in class_names]
        if unknown:
            raise ValueError(f"malignant classes {unknown} are not among the classes {list(class_names)}")
        num_classes = len(class_names)
        self.net = build_backbone(**backbone, num_classes=num_classes)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.ema = ModelEmaV3(self.net, decay=ema_decay, use_warmup=True) if ema_decay else None
        if self.ema is not None:
            self.ema.requires_grad_(False)
        self.mixup = Mixup(**mixup, label_smoothing=label_smoothing, num_classes=num_classes) if mixup else None
        if compile:
            self.net.compile()  # nn.Module.compile: in place, so state_dict keys keep no `_orig_mod.` prefix
        self.data_config = backbone_data_config(**backbone)
        self.register_buffer("malignant_mask", torch.tensor([c in malignant for c in class_names]))
        self.register_buffer("loss_weights", self._fixed_weights(class_weights, num_classes))
        self.register_buffer("log_prior", torch.zeros(num_classes))  # log training class prior, filled at fit start
        self.register_buffer(
            "posthoc_tau", torch.tensor(initial_posthoc_tau(posthoc_adjustment))
        )  # "val": set at calibration
        if malignant_weight is not None:
            if isinstance(class_weights, list | tuple):
                raise ValueError("set model.class_weights or model.malignant_weight, not both")
            self.loss_weights.copy_(1 + (malignant_weight - 1) * self.malignant_mask.float())
        self.prefix_depth = 0  # blocks whose activations arrive cached (lesion.models.activation_cache sets it)
        # Calibration, threshold, quality gate, the run's splits, eval transforms: fitted after fit, in checkpoints.
        self.deployment = Deployment((data or {}).get("transforms"))
        self.test_outputs: list[dict] = []  # the last test run's logits per batch: train.py reports from them
        for split in SPLITS:
            setattr(self, f"{split}_metrics", screening_collection().clone(prefix=f"{split}/"))
            if num_classes > 2:
                setattr(self, f"{split}_diagnosis", diagnosis_collection(num_classes).clone(prefix=f"{split}/"))
            if split != "train":
                setattr(self, f"{split}_counts", BinaryStatScores())  # confusion counts at threshold 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.training:
            return self.net(x)
        fitting = self._trainer is not None and self._trainer.state.fn == "fit"  # fast validation while fitting
        return tta_logits(self.eval_net, x, None if fitting else self.hparams.tta)

    @property
    def eval_net(self) -> torch.nn.Module:
        """The network that evaluates, predicts and exports: the weight EMA when on, else the trained weights."""
        return self.ema.module if self.ema is not None else self.net

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")[0]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def on_test_epoch_start(self) -> None:
        self.test_outputs = []

    def test_step(self, batch: dict, batch_idx: int) -> None:
        """Kept as predict_step returns them (lesion.screening.predictions.predictions_of), so the report at the
        operating point needs no second pass over the test split (with TTA, as long as the test itself)."""
        logits = self._step(batch, "test")[1]
        self.test_outputs.append({"image_id": batch["image_id"], "label": batch["label"].cpu(), "logits": logits.cpu()})

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Calibrated probabilities (softmax of logits / temperature) and the decision at the stored threshold."""
        logits = self._logits(batch).float()
        probs, p_malignant = self.scores(logits)
        return {
            "image_id": batch["image_id"],
            "label": batch["label"],
            "logits": logits,
            "probs": probs,
            "p_malignant": p_malignant,
            "malignant": p_malignant > self.deployment.threshold,
        }

    def scores(
        self, logits: torch.Tensor, temperature: bool = True, platt: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Class probabilities and P(malignant) of logits, as every consumer scores them: softmax at the stored
        temperature, then the malignant classes' sum through the stored Platt map. `platt=False`: the sum before the
        map (what the map is fitted on); `temperature=False` as well: as the network gives them."""
        logits = logits.float()
        if temperature:
            logits = logits / self.deployment.temperature.to(logits.device)
        probs = logits.softmax(dim=-1)
        return probs, self.malignant_probability(probs, platt=platt)

    def malignant_probability(self, probs: torch.Tensor, platt: bool = True) -> torch.Tensor:
        """P(malignant) from (temperature-scaled) class probabilities: the malignant classes' sum, then the stored
        Platt map (identity until calibration fits it; `platt=False`: the sum alone)."""
        p = probs[:, self.malignant_mask.to(probs.device)].sum(dim=-1)
        return platt_scale(p, self.deployment.platt) if platt else p

    def diagnosis_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits for the multiclass decision: post-hoc adjusted for the training prior when posthoc_adjustment."""
        return logits.float() - self.posthoc_tau.to(logits.device) * self.log_prior.to(logits.device)

    def is_malignant(self, labels: torch.Tensor) -> torch.Tensor:
        return self.malignant_mask[labels].long()

    def setup(self, stage: str) -> None:
        """At fit start: the training split's class prior (kept for post-hoc adjustment) and balanced weights."""
        if stage != "fit":
            return
        balanced = self.hparams.class_weights == "balanced" and self.hparams.malignant_weight is None
        needed = balanced or bool(self.hparams.logit_adjustment)
        class_counts = getattr(self.trainer.datamodule, "class_counts", None)
        if class_counts is None:
            if needed:
                raise ValueError("class_weights=balanced / logit_adjustment need a datamodule with class_counts()")
            return
        counts = torch.tensor(class_counts("train"), dtype=torch.float32)
        if needed and (counts == 0).any():
            empty = [c for c, n in zip(self.hparams.class_names, counts) if n == 0]
            raise ValueError(f"class_weights=balanced / logit_adjustment: the training split has no images of {empty}")
        if balanced:
            self.loss_weights.copy_(counts.sum() / (len(counts) * counts))
        self.log_prior.copy_((counts.clamp_min(1) / counts.sum()).log())

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update(self.net, step=self.global_step)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Checkpoints written before the operating point existed load as uncalibrated (eval.py then calibrates).
        state = checkpoint["state_dict"]
        for name in FITTED_BUFFERS:
            state.setdefault(name, getattr(self, name).detach().clone())
        self.deployment.load_entries(checkpoint)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint |= self.deployment.entries()  # eval.py evaluates on the stored splits and refuses leaks

    def on_fit_start(self) -> None:
        """Log the numbers training actually uses: class counts per split, sampling, loss class weights (and quiet
        Lightning's warning about the weight EMA's copy being in eval mode, which it is on purpose)."""
        used = {"loss_class_weights": dict(zip(self.hparams.class_names, self.loss_weights.tolist()))}
        describe = getattr(self.trainer.datamodule, "describe", None)
        if describe is not None:
            used |= describe()
        log.info("training with %s", used)
        for logger in self.loggers:
            logger.log_hyperparams({"data_used": used})
        in_eval = [name for name, module in self.named_modules() if not module.training]
        if self.ema is not None and all(name.startswith("ema.module") for name in in_eval):
            # Lightning warns of every module in eval mode when training starts ("may lead to unexpected behavior").
            # The weight EMA's copy is, on purpose (timm's ModelEmaV3: never trained, only updated): that warning, for
            # exactly that many modules, would only alarm. Any other count is still warned of.
            warnings.filterwarnings(
                "ignore",
                message=rf"Found {len(in_eval)} module\(s\) in eval mode at the start of training",
                category=PossibleUserWarning,
            )

    def on_validation_epoch_end(self) -> None:
        self._log_confusion("val")

    def on_test_epoch_end(self) -> None:
        self._log_confusion("test")

    def _logits(self, batch: dict, inputs: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for a batch of images, or cached prefix activations ("features": lesion.models.activation_cache)."""
        if "features" not in batch:
            return self(batch["image"] if inputs is None else inputs)
        features = batch["features"] if inputs is None else inputs
        if self.hparams.channels_last:
            features = features.contiguous(memory_format=torch.channels_last)
        return run_suffix(self.net if self.training else self.eval_net, features, self.prefix_depth)

    def _step(self, batch: dict, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss and the (detached, float) logits of a batch; updates and logs the split's metrics."""
        images, labels = batch.get("features", batch.get("image")), batch["label"]
        targets = None
        if split == "train" and self.mixup is not None and len(labels) % 2 == 0:  # timm's Mixup pairs the batch
            images, targets = self.mixup(images, labels)
        elif split == "train" and self.hparams.label_smoothing:
            targets = F.one_hot(labels, len(self.loss_weights)).float()
            targets = targets * (1 - self.hparams.label_smoothing) + self.hparams.label_smoothing / targets.shape[1]
        logits = self._logits(batch, images)  # mixup on cached activations is manifold mixup (Verma et al., 2019)
        loss = self._loss(logits, labels if targets is None else targets)
        # Calibrated P(malignant) (train.py calibrates before testing; identity while fitting), as eval.py scores.
        logits = logits.detach().float()
        p_malignant, y_malignant = self.scores(logits)[1], self.is_malignant(labels)
        metrics = getattr(self, f"{split}_metrics")
        metrics.update(p_malignant, y_malignant)
        size = len(labels)
        # sync_dist: under DDP every rank logs, checkpoints and early-stops on the loss of all ranks (the torchmetrics
        # collections sync themselves).
        on_step = split == "train"
        self.log(f"{split}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=size, sync_dist=True)
        self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=size)
        if hasattr(self, f"{split}_diagnosis"):
            diagnosis = getattr(self, f"{split}_diagnosis")
            diagnosis.update(self.diagnosis_logits(logits).softmax(dim=-1), labels)
            self.log_dict(diagnosis, on_step=False, on_epoch=True, batch_size=size)
        if split != "train":
            getattr(self, f"{split}_counts").update(p_malignant, y_malignant)
        return loss, logits

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Class-weighted cross-entropy on hard labels or soft targets (mixup, smoothing), logit-adjusted when set.

        Soft targets are weighted as PyTorch weights hard ones: sum_i sum_c w_c y_ic (-log p_ic) / sum_i sum_c w_c y_ic,
        which is F.cross_entropy(weight=w) for one-hot targets."""
        logits = logits.float() + self.hparams.logit_adjustment * self.log_prior
        if targets.ndim == 1:
            return F.cross_entropy(logits, targets, weight=self.loss_weights)
        weighted = targets * self.loss_weights
        return -(weighted * logits.log_softmax(-1)).sum() / weighted.sum()

    def _log_confusion(self, split: str) -> None:
        counts = getattr(self, f"{split}_counts")
        tp, fp, tn, fn, _ = counts.compute().tolist()
        counts.reset()
        self.log_dict({f"{split}/tp": tp, f"{split}/fn": fn, f"{split}/fp": fp, f"{split}/tn": tn})

    @staticmethod
    def _fixed_weights(class_weights: list[float] | str | None, num_classes: int) -> torch.Tensor:
        if class_weights is None or class_weights == "balanced":
            return torch.ones(num_classes)  # "balanced" is filled in from the data at fit start
        if isinstance(class_weights, str) or len(class_weights) != num_classes:
            raise ValueError(
                f"model.class_weights must be 'balanced', null or {num_classes} numbers, got {class_weights!r}"
            )
        return torch.tensor(class_weights, dtype=torch.float32)

    def configure_optimizers(self):
        optimizer = build_optimizer(self.net, self.hparams.optimizer or {"opt": "adam", "lr": 1e-3})
        epochs = max(self.trainer.max_epochs or 1, 1)
        steps = max(self.trainer.estimated_stepping_batches // epochs, 1)
        scheduler = build_scheduler(optimizer, self.hparams.scheduler, epochs, steps)
        if scheduler is None:
            return optimizer
        interval = "epoch" if (self.hparams.scheduler or {}).get("step_on_epochs", True) else "step"
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}

    def lr_scheduler_step(self, scheduler, metric) -> None:
        # timm schedulers take the epoch or the update count they are at, not a bare step().
        if (self.hparams.scheduler or {}).get("step_on_epochs", True):
            scheduler.step(epoch=self.current_epoch + 1)
        else:
            scheduler.step_update(num_updates=self.global_step)


def initial_posthoc_tau(posthoc_adjustment: float | str) -> float:
    if posthoc_adjustment == "val":
        return 0.0
    if isinstance(posthoc_adjustment, str):
        raise ValueError(f"model.posthoc_adjustment must be a number or 'val', got {posthoc_adjustment!r}")
    return float(posthoc_adjustment)
