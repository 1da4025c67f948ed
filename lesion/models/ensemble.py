"""Ensembles of checkpoints (seeds, epochs): one model whose logits are the mean of its members', calibrated as one."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch import nn

from lesion.models.module import FITTED_BUFFERS, TTA_VIEWS, LesionClassifier, initial_posthoc_tau, tta_mode
from lesion.screening.calibration import PLATT_IDENTITY

ENSEMBLE_KEY = "members"  # a checkpoint whose hyperparameters hold this key is an ensemble


class MeanLogits(nn.Module):
    """The members' networks as one: the mean of their logits (one graph when exported)."""

    def __init__(self, nets: list[nn.Module]):
        super().__init__()
        self.nets = nn.ModuleList(nets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([net(x).float() for net in self.nets]).mean(0)


class LesionEnsemble(LesionClassifier):
    """Several trained LesionClassifiers that score as one: logits averaged over the members' evaluation networks
    (their weight EMAs when kept), then one temperature, Platt map and threshold fitted on the ensemble's own validation
    output (`lesion.screening.evaluation.calibrate`) and stored in the ensemble's checkpoint, so eval.py, predict.py,
    app.py and export.py all make the same decision. It is used wherever a LesionClassifier is, for evaluation and
    inference.

    members: each member's hyperparameters (its weights are in the ensemble's state dict under `members.<i>.`).
    tta: test-time augmentation of the ensemble's logits (false, flip or true, dihedral), as LesionClassifier's.
    posthoc_adjustment: of the 7-class decision, as LesionClassifier's (a number, or "val": fitted at calibration on
    the ensemble's val output); None: the first member's setting.
    """

    def __init__(self, members: list[dict], tta: bool | str = False, posthoc_adjustment: float | str | None = None):
        L.LightningModule.__init__(self)  # not LesionClassifier's: the members build the networks
        self.save_hyperparameters({"members": members, "tta": tta, "posthoc_adjustment": posthoc_adjustment})
        tta_mode(tta, key="tta")  # a wrong value fails here, not at the first test batch
        if not members:
            raise ValueError("an ensemble needs at least one member checkpoint")
        self.members = nn.ModuleList(LesionClassifier(**hparams) for hparams in members)
        first = self.members[0]
        # What consumers read from a classifier's hyperparameters (load_from_checkpoint drops these extra keys).
        self.hparams.update(
            {k: first.hparams.get(k) for k in ("class_names", "malignant", "data", "backbone")}
            | {"channels_last": False}
        )
        if posthoc_adjustment is None:
            self.hparams.posthoc_adjustment = first.hparams.get("posthoc_adjustment", 0.0)
        self.data_config = first.data_config
        self.ema, self.prefix_depth = None, 0
        self.register_buffer("malignant_mask", first.malignant_mask.clone())
        self.register_buffer("log_prior", torch.zeros_like(first.log_prior))  # the members' mean, set on assembly
        self.register_buffer("posthoc_tau", torch.tensor(initial_posthoc_tau(self.hparams.posthoc_adjustment)))
        self.register_buffer("temperature", torch.tensor(1.0))
        self.register_buffer("platt", torch.tensor(PLATT_IDENTITY, dtype=torch.float64))
        self.register_buffer("threshold", torch.tensor(0.5, dtype=torch.float64))  # exact, as chosen
        self.register_buffer("calibrated", torch.tensor(False))
        self.operating_point: dict | None = None
        self.quality: dict | None = None
        self.split_ids: list[dict[str, list[str]] | None] = [None] * len(members)  # each member's training splits
        self.split_groups: list[dict | None] = [None] * len(members)  # and their groups

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        for i, member in enumerate(self.members):  # members' buffers added since the ensemble was written
            for name in FITTED_BUFFERS:
                checkpoint["state_dict"].setdefault(f"members.{i}.{name}", getattr(member, name).detach().clone())
        self.member_paths = list(checkpoint.get("member_paths", []))
        self.split_ids = checkpoint.get("split_ids") or [None] * len(self.members)
        self.split_groups = checkpoint.get("split_groups") or [None] * len(self.members)

    @property
    def eval_net(self) -> nn.Module:
        return MeanLogits([member.eval_net for member in self.members])

    def training_step(self, batch: dict, batch_idx: int):
        raise RuntimeError("an ensemble is assembled from trained checkpoints, not trained; train its members")

    def configure_optimizers(self):
        raise RuntimeError("an ensemble is assembled from trained checkpoints, not trained; train its members")

    @classmethod
    def from_checkpoints(
        cls, paths: list[str | Path], tta: bool | str | None = None, posthoc_adjustment: float | str | None = None
    ) -> LesionEnsemble:
        """Assemble trained checkpoints (uncalibrated: fit its operating point on val, e.g. with eval.py).

        tta: None: the members' TTA (the one with more views when they differ). Members must share classes and input
        pipeline."""
        from lesion.serving.inference import eval_transforms, load_model

        models = [load_model(p) for p in paths]
        if any(isinstance(m, LesionEnsemble) for m in models):
            raise ValueError("ckpt_path lists an ensemble checkpoint: list its members' checkpoints instead")
        first = models[0]
        reference = _pipeline(first, eval_transforms)
        for path, model in zip(paths[1:], models[1:]):
            differs = [k for k, v in _pipeline(model, eval_transforms).items() if v != reference[k]]
            if differs:
                raise ValueError(
                    f"{path} differs from {paths[0]} in {differs}: an ensemble's members must share classes, "
                    "input size and preprocessing, so that one input pipeline feeds them all"
                )
        if tta is None:
            modes = {tta_mode(m.hparams.get("tta", False)) for m in models}
            tta = next((mode for mode in reversed(TTA_VIEWS) if mode in modes), False)
        ensemble = cls([dict(m.hparams) for m in models], tta=tta, posthoc_adjustment=posthoc_adjustment)
        for member, model in zip(ensemble.members, models):
            member.load_state_dict(model.state_dict())
        ensemble.log_prior.copy_(torch.stack([m.log_prior for m in models]).mean(0))
        ensemble.member_paths = [str(p) for p in paths]
        ensemble.split_ids = [m.split_ids for m in models]
        ensemble.split_groups = [m.split_groups for m in models]
        return ensemble.eval()

    def save(self, path: str | Path, extra: dict | None = None) -> Path:
        """A checkpoint that `lesion.serving.inference.load_model` (every entry point) reads back as this ensemble
        (with `extra` top-level entries)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "state_dict": self.state_dict(),
                "hyper_parameters": {k: self.hparams[k] for k in ("members", "tta", "posthoc_adjustment")},
                "member_paths": list(getattr(self, "member_paths", [])),
                "operating_point": self.operating_point,
                "quality": self.quality,
                "split_ids": self.split_ids,
                "split_groups": self.split_groups,
                "pytorch-lightning_version": L.__version__,
            }
            | (extra or {}),
            path,
        )
        return path


def _pipeline(model: LesionClassifier, eval_transforms) -> dict:
    """What must match across members: classes, the malignant grouping, and the evaluation input pipeline."""
    return {
        "class_names": list(model.hparams.class_names),
        "malignant": list(model.hparams.malignant),
        "input_size": list(model.data_config["input_size"]),
        "mean/std": [list(model.data_config["mean"]), list(model.data_config["std"])],
        "interpolation": model.data_config.get("interpolation"),
        "preprocessing": eval_transforms(model).preprocess_settings(),
    }
