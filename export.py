"""python export.py ckpt_path=outputs/.../checkpoints/best.ckpt [format=onnx|torchscript] [eval_dir=outputs/eval/...]"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig

from lesion.models.loading import load_calibrated
from lesion.runs.config import to_plain
from lesion.serving.export import FORMATS, export
from lesion.serving.model_card import external_evals, find_eval_dir, model_card

log = logging.getLogger("lesion")
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}


def run_export(config: dict) -> dict:
    """Export the checkpoint and write its model card; returns the paths written."""
    fmt = config["format"]
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r}: choose one of {FORMATS}")
    model = load_calibrated(config["ckpt_path"], config["allow_uncalibrated"])
    if isinstance(config["ckpt_path"], list):
        raise ValueError("export.py takes one checkpoint: for an ensemble, the ensemble.ckpt that eval.py wrote")
    ckpt = Path(config["ckpt_path"])
    out = Path(config["paths"]["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    path = Path(config["output"]) if config["output"] else out / f"model{SUFFIX[fmt]}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, and still what many apps load
        export(model, fmt, path, ckpt)
    log.info("%s model written to %s (%.1f MB)", fmt, path, path.stat().st_size / 1e6)
    written = {"model": str(path)}
    if config["card"]:
        eval_dir = Path(config["eval_dir"]) if config["eval_dir"] else find_eval_dir(ckpt, Path(config["eval_search"]))
        if eval_dir is None:
            log.warning(
                "no eval.py run found for %s under %s: the card has no fairness/robustness", ckpt, config["eval_search"]
            )
        card = out / "MODEL_CARD.md"
        external = external_evals(ckpt, Path(config["eval_search"]))
        card.write_text(model_card(model, ckpt, eval_dir, [path], external))
        log.info("model card written to %s (eval artifacts from %s)", card, eval_dir)
        written["card"] = str(card)
    return written


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    run_export(to_plain(cfg))


if __name__ == "__main__":
    main()
