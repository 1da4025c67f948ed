"""Deployment: what a trained classifier carries for everyone who uses it, fitted after training and kept in its
checkpoint: the calibration, the operating point, the quality gate, the training run's splits, the evaluation
transforms."""

from __future__ import annotations

import torch
from torch import nn

from lesion.data.transforms import LesionTransforms
from lesion.stats.calibration import PLATT_IDENTITY

# Buffers fitted after training; checkpoints written before one existed load with its default.
BUFFERS = ("temperature", "platt", "threshold", "calibrated")
# Checkpoint entries beside the state dict.
ENTRIES = ("operating_point", "quality", "split_ids", "split_groups")


class Deployment(nn.Module):
    """The state every consumer of a trained model reads (train.py and eval.py fit it, lesion.screening.checkpoints
    stores it; predict.py, app.py, export.py, the model card and the leak guard read it), in one place:

    - `temperature`, `platt` (a, b on P(malignant)), `threshold` (exact, as chosen), `calibrated`: buffers, so they
      travel in the state dict (`deployment.<name>`), set by `lesion.screening.evaluation.calibrate`;
    - `operating_point`: how the threshold was chosen (method, target, level, bound, split);
    - `quality`: the quality gate's fitted thresholds (`lesion.stats.quality.fit_quality`);
    - `split_ids`, `split_groups`: the training run's image ids per split, and their lesion or patient (the leak
      guard refuses them); lists of those for an ensemble, one per member;
    - `transforms`: the evaluation-time preprocessing settings of the run's data config (`eval_transforms`).
    """

    def __init__(self, transforms: dict | None = None):
        super().__init__()
        self.register_buffer("temperature", torch.tensor(1.0))
        self.register_buffer("platt", torch.tensor(PLATT_IDENTITY, dtype=torch.float64))
        self.register_buffer("threshold", torch.tensor(0.5, dtype=torch.float64))
        self.register_buffer("calibrated", torch.tensor(False))
        self.operating_point: dict | None = None
        self.quality: dict | None = None
        self.split_ids: dict | list | None = None
        self.split_groups: dict | list | None = None
        self.transforms = dict(transforms or {})

    def eval_transforms(self, data_config: dict) -> LesionTransforms:
        """The evaluation-time transforms of the run that trained the model (resize, fixed CLAHE, normalisation)."""
        return LesionTransforms(data_config, **self.transforms)

    def entries(self) -> dict:
        """The checkpoint entries beside the state dict."""
        return {name: getattr(self, name) for name in ENTRIES}

    def load_entries(self, checkpoint: dict, prefix: str = "") -> None:
        """Read the entries of a checkpoint, and bring its state dict to this layout: buffers of checkpoints written
        before Deployment existed sat on the module itself (`<prefix>threshold`), and those written before a buffer
        existed lack it (it loads with its default: an uncalibrated checkpoint, which eval.py then calibrates)."""
        state = checkpoint["state_dict"]
        for name in BUFFERS:
            old, new = f"{prefix}{name}", f"{prefix}deployment.{name}"
            if old in state and new not in state:
                state[new] = state.pop(old)
            state.setdefault(new, getattr(self, name).detach().clone())
        if not prefix:
            for name in ENTRIES:
                setattr(self, name, checkpoint.get(name))
