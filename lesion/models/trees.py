"""Gradient-boosted trees (LightGBM) over a lesion's tabular features and its image score: one fit per fold, and the
fitted stack as data (boosters as text, feature names, category levels, calibration) that a JSON file holds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lesion.stats.calibration import platt_scale


def fit_trees(x: pd.DataFrame, y: np.ndarray, params: dict, rounds: int, seed: int = 0):
    """A binary LightGBM booster on `x` (pandas category columns split as categories, NaN as missing)."""
    import lightgbm as lgb

    settings = {"objective": "binary", "verbosity": -1, "seed": seed, "deterministic": True} | dict(params)
    return lgb.train(settings, lgb.Dataset(x, label=y, free_raw_data=True), num_boost_round=rounds)


def tree_logits(boosters: list, x: pd.DataFrame) -> np.ndarray:
    """The mean raw score (log-odds) of the boosters: each fold's model votes on rows none of them trained on."""
    return np.mean([b.predict(x, raw_score=True) for b in boosters], axis=0)


def importance(boosters: list) -> pd.Series:
    """Total split gain per feature, summed over the boosters, largest first."""
    gains = [pd.Series(b.feature_importance("gain"), index=b.feature_name()) for b in boosters]
    return pd.concat(gains, axis=1).sum(axis=1).sort_values(ascending=False)


class TreeStack:
    """A fitted stack: per-fold boosters, the columns they read with their category levels, the settings that
    built those columns, and the calibration (Platt map of the log-odds) and threshold chosen on out-of-fold scores."""

    def __init__(self, boosters: list, columns: list[str], categories: dict, settings: dict, deployment: dict):
        self.boosters, self.columns, self.categories = boosters, columns, categories
        self.settings, self.deployment = settings, deployment

    def logits(self, x: pd.DataFrame) -> np.ndarray:
        x = x[self.columns].copy()
        for column, levels in self.categories.items():
            x[column] = pd.Categorical(x[column].astype(object), categories=levels)
        return tree_logits(self.boosters, x)

    def p_malignant(self, x: pd.DataFrame) -> np.ndarray:
        """Calibrated P(malignant) of the lesions in `x`."""
        return self.calibrated(self.logits(x))

    def calibrated(self, logits: np.ndarray) -> np.ndarray:
        """The stored Platt map (lesion.stats.calibration.platt_scale) of the stack's log-odds."""
        p = torch.sigmoid(torch.as_tensor(logits, dtype=torch.float64))
        return platt_scale(p, self.deployment["platt"]).numpy()

    def save(self, path: str | Path) -> Path:
        data = {
            "columns": self.columns,
            "categories": self.categories,
            "settings": self.settings,
            "deployment": self.deployment,
            "boosters": [b.model_to_string() for b in self.boosters],
        }
        Path(path).write_text(json.dumps(data))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> TreeStack:
        import lightgbm as lgb

        data = json.loads(Path(path).read_text())
        boosters = [lgb.Booster(model_str=text) for text in data["boosters"]]
        return cls(boosters, data["columns"], data["categories"], data["settings"], data["deployment"])
