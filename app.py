"""python app.py ckpt_path=outputs/.../checkpoints/best.ckpt [port=8000] [gradcam=false]: the phone web page."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import uvicorn
from omegaconf import DictConfig

from lesion.models.loading import load_calibrated
from lesion.runs.allocator import retain_freed_memory
from lesion.runs.config import to_plain
from lesion.serving.inference import Screener
from lesion.serving.webapp import create_app

log = logging.getLogger("lesion")


def build_app(config: dict):
    """Load the model once and wrap it in the web app."""
    retain_freed_memory(config["allocator"]["retain_mb"])
    model = load_calibrated(config["ckpt_path"], config["allow_uncalibrated"])
    screener = Screener.from_config(model, config)
    name = f"{model.hparams.backbone['model_name']} ({Path(str(config['ckpt_path'])).name})"
    return create_app(screener, int(config["max_upload_mb"] * 1_000_000), name, config["max_queue"])


@hydra.main(version_base="1.3", config_path="conf", config_name="app")
def main(cfg: DictConfig) -> None:
    config = to_plain(cfg)
    app = build_app(config)
    log.info("serving on http://%s:%d (Ctrl-C stops)", config["host"], config["port"])
    uvicorn.run(app, host=config["host"], port=config["port"], log_level="info")


if __name__ == "__main__":
    main()
