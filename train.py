"""python train.py [data=apples_oranges] [backbone=efficientnet_lite0] [experiment=study_final] [key=value ...]"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig

from lesion.backbones import backbone_data_config
from lesion.config import to_plain
from lesion.data import build_datamodule
from lesion.evaluation import operating_point_after_fit
from lesion.module import LesionClassifier
from lesion.trainer import build_trainer

log = logging.getLogger("lesion")


def train(config: dict) -> dict[str, float]:
    """Fit, test the best checkpoint, and write its test metrics to `metrics.json` in the run dir."""
    L.seed_everything(config["seed"], workers=True)
    datamodule = build_datamodule(config["data"], backbone_data_config(**config["backbone"]))
    model = LesionClassifier(
        backbone=config["backbone"],
        class_names=list(datamodule.classes),
        malignant=list(datamodule.malignant),
        data=config["data"],
        **config["model"],
    )
    trainer = build_trainer(config)
    out = Path(config["paths"]["output_dir"])
    datamodule.setup("fit")
    datamodule.save_splits(out / "splits.csv")  # reuse with data.split_file=<this file>
    trainer.fit(model, datamodule=datamodule, ckpt_path=config.get("ckpt_path"))
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    # fast_dev_run saves no checkpoint: test the weights in memory then.
    metrics = trainer.test(model, datamodule=datamodule, ckpt_path=best or None)[0]
    op = config["operating_point"]  # the best weights are loaded now: calibrate them and pick the threshold
    if not trainer.fast_dev_run:  # one batch says nothing about a threshold
        metrics |= operating_point_after_fit(
            model, datamodule, trainer, best, op["target_sensitivity"], op["bootstrap_resamples"]
        )
    (out / "metrics.json").write_text(json.dumps(metrics | {"best_checkpoint": best}, indent=2, sort_keys=True))
    log.info("test metrics of %s written to %s", best or "the final weights", out / "metrics.json")
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(to_plain(cfg))
    return metrics.get(f"test/{cfg.monitor.split('/', 1)[-1]}")


if __name__ == "__main__":
    main()
