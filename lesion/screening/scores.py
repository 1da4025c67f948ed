"""A run's per-image scores for a tabular stack (stack.py): the raw log-odds of P(malignant) of every val and test
image, and how far each image's embedding lies from the same patient's other lesions (the image's ugly duckling)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from lesion.data.tabular import ugly_duckling
from lesion.screening.predictions import predict

COLUMNS = ("image_id", "split", "fold", "y_malignant", "image_score", "image_ud")


def score_table(model, datamodule, trainer, fold: int | None, embedding: bool) -> pd.DataFrame:
    """One row per val and test image: `image_score`, the log-odds of the network's own P(malignant) (before the
    run's calibration, which val itself fitted: a stack fitted on val must not see val's labels through it), and
    with `embedding`, `image_ud`, the ugly-duckling distance of its pooled features among its patient's images of
    the same split (datamodule.group_column; NaN for a patient with fewer than three)."""
    parts = []
    for split, loader in (("val", datamodule.val_dataloader()), ("test", datamodule.test_dataloader())):
        predictions = predict(model, loader, trainer, features=embedding)
        p = predictions.p_malignant(model, calibrated=False).double().clamp(1e-7, 1 - 1e-7)
        part = pd.DataFrame({"image_id": predictions.image_ids, "split": split, "fold": fold})
        part["y_malignant"] = predictions.y_malignant.numpy().astype(int)
        part["image_score"] = torch.logit(p).numpy()
        part["image_ud"] = np.nan
        group = datamodule.group_column
        if embedding and group and group in datamodule.frames[split].columns:
            rows = datamodule.frames[split].assign(image_id=lambda f: f["image_id"].astype(str)).set_index("image_id")
            groups = rows.loc[list(map(str, predictions.image_ids)), group].astype(str).to_numpy()
            part["image_ud"] = ugly_duckling(predictions.features.float().numpy(), groups)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)[list(COLUMNS)]
