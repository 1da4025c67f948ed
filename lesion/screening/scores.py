"""A run's per-image scores for a tabular stack (stack.py): the raw log-odds of P(malignant) of every val and test
image, and how far each image's embedding lies from the same patient's other lesions (the image's ugly duckling)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from lesion.data.tabular import ugly_duckling
from lesion.screening.predictions import Predictions, predict

COLUMNS = ("image_id", "split", "fold", "y_malignant", "image_score", "image_ud")


def score_table(model, datamodule, trainer, fold: int | None, embedding: bool) -> pd.DataFrame:
    """Score the val and test splits (with pooled features when `embedding`) and tabulate them (`scores_frame`)."""
    loaders = {"val": datamodule.val_dataloader(), "test": datamodule.test_dataloader()}
    predictions = {split: predict(model, loader, trainer, features=embedding) for split, loader in loaders.items()}
    return scores_frame(model, predictions, datamodule.frames, datamodule.group_column, fold)


def scores_frame(
    model, predictions: dict[str, Predictions], frames: dict[str, pd.DataFrame], group: str | None, fold=None
) -> pd.DataFrame:
    """One row per scored image: `image_score`, the log-odds of the network's own P(malignant) (before the run's
    calibration, which val itself fitted: a stack fitted on val must not see val's labels through it), and, where
    the predictions carry pooled features and the frames a `group` column, `image_ud`: the ugly-duckling distance
    of the image's features among its patient's images of the same split (NaN for fewer than three)."""
    parts = []
    for split, scored in predictions.items():
        p = scored.p_malignant(model, calibrated=False).double().clamp(1e-7, 1 - 1e-7)
        part = pd.DataFrame({"image_id": list(map(str, scored.image_ids)), "split": split, "fold": fold})
        part["y_malignant"] = scored.y_malignant.numpy().astype(int)
        part["image_score"] = torch.logit(p).numpy()
        part["image_ud"] = np.nan
        if scored.features is not None and group and group in frames[split].columns:
            rows = frames[split].assign(image_id=lambda f: f["image_id"].astype(str)).set_index("image_id")
            groups = rows.loc[part["image_id"], group].astype(str).to_numpy()
            part["image_ud"] = ugly_duckling(scored.features.float().numpy(), groups)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)[list(COLUMNS)]
