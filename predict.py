"""python predict.py ckpt_path=outputs/.../checkpoints/best.ckpt input=photo.jpg|folder [gradcam=false] [crop=center]"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import hydra
import pandas as pd
from omegaconf import DictConfig
from tqdm import tqdm

from lesion.models.loading import load_calibrated
from lesion.runs.allocator import retain_freed_memory
from lesion.runs.config import to_plain
from lesion.serving.inference import DISCLAIMER, Result, Screener

log = logging.getLogger("lesion")


def input_files(path: Path) -> list[Path]:
    """The file itself, or every file under a folder (non-images included: each gets its own error row)."""
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise FileNotFoundError(f"input={path} is an empty folder; pass an image or a folder of images")
        return files
    raise FileNotFoundError(f"input={path} does not exist; pass an image file or a folder of images")


def run_predict(config: dict) -> list[Result]:
    """Screen every input file; write predictions.csv/.json and Grad-CAM overlays to the run dir."""
    retain_freed_memory(config["allocator"]["retain_mb"])
    model = load_calibrated(config["ckpt_path"], config["allow_uncalibrated"])
    screener = Screener.from_config(model, config)
    files = input_files(Path(config["input"]))
    out = Path(config["paths"]["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    if config["gradcam"]:
        (out / "gradcam").mkdir(exist_ok=True)
    results, rows = [], []
    with tqdm(total=len(files), desc="screening", unit="img", disable=len(files) < 2) as progress:
        # Streamed: each overlay is written as its batch is done and let go, so a folder of any size runs in the
        # memory of one batch.
        for i, result in enumerate(screener.iter_files(files, config["batch_size"], progress)):
            row = result.row()
            if result.overlay is not None:
                path = out / "gradcam" / f"{i:04d}_{Path(result.file).stem}.png"
                cv2.imwrite(str(path), cv2.cvtColor(result.overlay, cv2.COLOR_RGB2BGR))
                row["gradcam"] = str(path)
                result.overlay = None
            results.append(result)
            rows.append(row)
    pd.DataFrame(rows).to_csv(out / "predictions.csv", index=False)
    summary = {
        "disclaimer": DISCLAIMER,
        "checkpoint": str(config["ckpt_path"]),
        "threshold": screener.threshold,
        "temperature": float(model.deployment.temperature),
        "platt": [float(v) for v in model.deployment.platt],
        "tta": screener.tta or False,
        "predictions": rows,
    }
    (out / "predictions.json").write_text(json.dumps(summary, indent=2))
    for row in rows:
        if row["error"]:
            log.error("%s: %s", row["file"], row["error"])
        elif row["decision"] == "retake":
            log.warning("%s: retake (%s): %s", row["file"], row["quality"], row["message"])
        else:
            log.info("%s: P(malignant) %.3f, %s", row["file"], row["p_malignant"], row["message"])
    bad, retake = sum(1 for r in rows if r["error"]), sum(1 for r in rows if r["decision"] == "retake")
    log.info(
        "%d screened, %d to retake (quality gate), %d could not be read; written to %s",
        len(rows) - bad - retake,
        retake,
        bad,
        out,
    )
    log.warning(DISCLAIMER)
    return results


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    run_predict(to_plain(cfg))


if __name__ == "__main__":
    main()
