"""python train.py [data=apples_oranges] [backbone=efficientnet_lite0] [experiment=study_final] [key=value ...]"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import hydra
import lightning as L
import torch
from omegaconf import DictConfig

from lesion.data import build_datamodule
from lesion.data.splits import split_groups
from lesion.models.activation_cache import ActivationCache
from lesion.models.backbones import backbone_data_config
from lesion.models.module import LesionClassifier
from lesion.runs import dashboard
from lesion.runs.allocator import retain_freed_memory
from lesion.runs.config import in_multirun, to_plain
from lesion.runs.sweeps import run_job
from lesion.runs.trainer import EpochHistory, ImagesSeen, build_trainer, resume_checkpoint
from lesion.screening.after_fit import after_fit
from lesion.screening.checkpoints import store_operating_point
from lesion.screening.predictions import predictions_of
from lesion.screening.scores import score_table

log = logging.getLogger("lesion")


def train(config: dict) -> dict:
    """Fit, test the best checkpoint, calibrate it on val, and write the metrics to `metrics.json` in the run dir."""
    retain_freed_memory(config["allocator"]["retain_mb"])
    L.seed_everything(config["seed"], workers=True)
    datamodule = build_datamodule(config["data"], backbone_data_config(**config["backbone"]))
    classes = {"class_names": list(datamodule.classes), "malignant": list(datamodule.malignant)}
    model = LesionClassifier(
        backbone=config["backbone"],
        data=config["data"],
        optimizer=config["optimizer"],
        scheduler=config["scheduler"],
        **classes,
        **config["model"],
    )
    if config["activation_cache"]["enabled"]:
        datamodule = ActivationCache(
            datamodule, model, config["activation_cache"]["views"], config["activation_cache"]["dtype"]
        )
    ckpt_path = resume_checkpoint(config)
    trainer = build_trainer(config, ckpt_path)
    if config["scores"]["write"] and trainer.world_size > 1:  # each rank would score only its share of val and test
        raise ValueError("scores.write=true scores val and test in one process: train with trainer.devices=1")
    out = Path(config["paths"]["output_dir"])
    out.mkdir(parents=True, exist_ok=True)  # Hydra makes it; callers composing the config themselves may not
    datamodule.setup("fit")
    datamodule.save_splits(out / "splits.csv")  # reuse with data.split_file=<this file>
    data = getattr(datamodule, "inner", datamodule)
    model.deployment.split_ids = {split: frame["image_id"].astype(str).tolist() for split, frame in data.frames.items()}
    model.deployment.split_groups = split_groups(
        data.frames, data.group_column
    )  # the leak guard refuses a training lesion
    for logger in trainer.loggers:
        logger.log_hyperparams({"config": config})
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    fitted = time.perf_counter()
    seconds = fitted - start
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    # Test and calibration read images: cached activations allow no test-time augmentation (identical otherwise).
    datamodule = getattr(datamodule, "inner", datamodule)
    if best:  # fast_dev_run saves no checkpoint: the weights in memory then
        model.load_state_dict(torch.load(best, map_location=model.device, weights_only=True)["state_dict"])
    # Calibrated before the test, so that `test/…` describe calibrated P(malignant), the score eval.py reports and
    # every decision uses. One batch says nothing about a threshold; under DDP, predict() sees one rank's share, so
    # eval.py calibrates such checkpoints.
    calibrating = not trainer.fast_dev_run and trainer.world_size == 1
    tested: dict = {}

    def run_test():
        tested.update(trainer.test(model, datamodule=datamodule)[0])
        return predictions_of(model.test_outputs, model)  # the report reads trainer.test's outputs: no second pass

    report, test = {}, None
    history = next((c for c in trainer.callbacks if isinstance(c, EpochHistory)), None)
    if calibrating:
        settings = {"operating_point": config["operating_point"], "quality": config["quality"]}
        settings["checkpoints_compared"] = history.compared() if history else 1  # val chose among them
        settings["predictions"] = out / "predictions.csv"  # each split's scores, before any report is built
        store = (lambda _: store_operating_point(best, model)) if best else None
        report, test = after_fit(model, datamodule, trainer, settings, run_test, store)
    else:
        run_test()
    score = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
    seen = next(c for c in trainer.callbacks if isinstance(c, ImagesSeen))
    metrics = report | tested  # trainer.test's test/ figures (logged to the loggers) over the report's equal ones
    metrics |= {
        "monitor": config["monitor"],
        "best_val_score": float(score) if score is not None else None,
        "epochs": trainer.current_epoch,
        "fit_seconds": round(seconds, 1),
        "train_images": seen.total,
        "train_img_per_s": round(seen.total / seconds, 1),
        "after_fit_seconds": round(time.perf_counter() - fitted, 1),  # calibration, gate, test, reports
    }
    metrics |= history.at_best() if history else {}
    if config["scores"]["write"] and trainer.is_global_zero:  # per-image scores for a tabular stack (stack.py)
        table = score_table(model, datamodule, trainer, config["data"].get("fold"), config["scores"]["embedding"])
        table.to_csv(out / "scores.csv", index=False)
    if test is not None:
        dashboard.log_test_predictions(trainer.loggers, model, test, datamodule.reader(), best)
    if trainer.is_global_zero:
        (out / "metrics.json").write_text(json.dumps(metrics | {"best_checkpoint": best}, indent=2, sort_keys=True))
        log.info("test metrics of %s written to %s", best or "the final weights", out / "metrics.json")
    dashboard.finish(trainer.loggers)
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Returns the best monitored val score, which Hydra sweepers (Optuna) optimise; a job that fails in a sweep
    returns None, with its error in the job dir (lesion.runs.sweeps.run_job)."""
    return run_job(lambda config: train(config)["best_val_score"], to_plain(cfg), in_sweep=in_multirun())


if __name__ == "__main__":
    main()
