"""A callback that logs a val score that is a known function of the learning rate: monitored, it fixes a search's
outcome by construction (which trial is best, and by how much), not by a tiny model happening to learn."""

from __future__ import annotations

import math

from lightning.pytorch.callbacks import Callback


def planted_score(lr: float) -> float:
    """0.5 at lr 1e-5 rising to 0.9 at 1e-3: strictly increasing in lr."""
    return 0.5 + 0.2 * (math.log10(lr) + 5)


class ScoreFromLr(Callback):
    """Logs `name` (run with monitor=<name>) as planted_score of the optimizer's initial learning rate."""

    def __init__(self, name: str = "val/planted"):
        self.name = name

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        pl_module.log(self.name, planted_score(trainer.optimizers[0].defaults["lr"]))
