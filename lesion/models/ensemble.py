"""Ensembles of checkpoints (seeds, epochs): one model whose logits are the mean of its members', calibrated as one."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch import nn

from lesion.models.deployment import Deployment
from lesion.models.module import FITTED_BUFFERS, LesionClassifier, initial_posthoc_tau
from lesion.models.tta import tta_mode

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
        # The ensemble's own calibration and threshold; each member's training splits and their groups.
        self.deployment = Deployment(first.deployment.transforms)
        self.deployment.split_ids, self.deployment.split_groups = [None] * len(members), [None] * len(members)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        for i, member in enumerate(self.members):  # members' buffers added since the ensemble was written
            for name in FITTED_BUFFERS:
                checkpoint["state_dict"].setdefault(f"members.{i}.{name}", getattr(member, name).detach().clone())
            member.deployment.load_entries(checkpoint, prefix=f"members.{i}.")
        self.member_paths = list(checkpoint.get("member_paths", []))
        self.deployment.split_ids = self.deployment.split_ids or [None] * len(self.members)
        self.deployment.split_groups = self.deployment.split_groups or [None] * len(self.members)

    @property
    def eval_net(self) -> nn.Module:
        return MeanLogits([member.eval_net for member in self.members])

    def training_step(self, batch: dict, batch_idx: int):
        raise RuntimeError("an ensemble is assembled from trained checkpoints, not trained; train its members")

    def configure_optimizers(self):
        raise RuntimeError("an ensemble is assembled from trained checkpoints, not trained; train its members")

    def save(self, path: str | Path, extra: dict | None = None) -> Path:
        """A checkpoint that `lesion.models.loading.load_model` (every entry point) reads back as this ensemble
        (with `extra` top-level entries)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "state_dict": self.state_dict(),
                "hyper_parameters": {k: self.hparams[k] for k in ("members", "tta", "posthoc_adjustment")},
                "member_paths": list(getattr(self, "member_paths", [])),
                **self.deployment.entries(),
                "pytorch-lightning_version": L.__version__,
            }
            | (extra or {}),
            path,
        )
        return path
