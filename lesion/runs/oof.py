"""The out-of-fold scores of a fold sweep (python train.py -m experiment=isic2024_oof data.fold=0,1,2,3,4) as one
table in the sweep dir: every training image scored by the fold model that did not see it, every held-out test
image by each fold's model and their mean. stack.py reads it."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("lesion")
TABLE = "oof_scores.csv"


def out_of_fold_table(job_dirs: list[Path], num_folds: int) -> pd.DataFrame:
    """Each job's scores.csv: its val rows become split `train` with the job's fold; its test rows are pivoted
    to one `score_fold<k>` column per fold, averaged into `image_score` (and `image_ud`). Refused, naming what is
    wrong, when a fold is missing or listed twice, or when the folds' test sets or val sets disagree."""
    tables = {}
    for job in job_dirs:
        path = job / "scores.csv"
        if path.is_file():
            table = pd.read_csv(path, dtype={"image_id": str})
            folds = table["fold"].dropna().unique()
            if len(folds) != 1:
                raise ValueError(f"{path}: one fold per job expected, found {list(folds)}")
            if int(folds[0]) in tables:
                raise ValueError(f"fold {int(folds[0])} was scored by two jobs ({path}): sweep each data.fold once")
            tables[int(folds[0])] = table
    missing = sorted(set(range(num_folds)) - set(tables))
    if missing:
        raise ValueError(
            f"no scores.csv for fold(s) {missing} of {num_folds} in {sorted(map(str, job_dirs))}: run them "
            f"(data.fold={','.join(map(str, missing))}) before the stack"
        )
    val = pd.concat([t[t["split"] == "val"] for t in tables.values()], ignore_index=True)
    twice = val["image_id"][val["image_id"].duplicated()]
    if len(twice):
        raise ValueError(f"images validated by two folds (e.g. {twice[:5].tolist()}): the folds are not a partition")
    tests = {k: t[t["split"] == "test"].set_index("image_id") for k, t in tables.items()}
    ids = {k: set(t.index) for k, t in tests.items()}
    if len({frozenset(v) for v in ids.values()}) > 1:
        raise ValueError("the folds' held-out test sets differ: every job needs the same data.seed and test_fraction")
    first = tests[min(tests)]
    test = first[["y_malignant"]].copy()
    for k, t in sorted(tests.items()):
        test[f"score_fold{k}"] = t.loc[test.index, "image_score"]
    folds = [f"score_fold{k}" for k in sorted(tests)]
    test["image_score"] = test[folds].mean(axis=1)
    test["image_ud"] = pd.concat([t.loc[test.index, "image_ud"] for t in tests.values()], axis=1).mean(axis=1)
    test = test.reset_index().assign(split="test", fold=float("nan"))
    return pd.concat([val.assign(split="train"), test], ignore_index=True)


class OutOfFoldScores(Callback):
    """Hydra callback: at the end of a fold sweep, write oof_scores.csv to the sweep dir (out_of_fold_table)."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep = Path(config.hydra.sweep.dir)
        jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "scores.csv").is_file())
        table = out_of_fold_table(jobs, int(config.data.num_folds))
        table.to_csv(sweep / TABLE, index=False)
        log.info("out-of-fold scores of %d images written to %s", len(table), sweep / TABLE)
