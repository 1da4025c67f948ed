"""python bench/metadata_fusion.py CKPT [CKPT ...] [--root ../shared/data/isic2018] [--resamples 1000] [--out F.json]
[--set key=value ...]

Does what a clinic knows of the patient (age, sex, body site: HAM10000_metadata.csv) add to the image's screening
score? The framework's one way to combine them is the tabular stack (stack.py). For each checkpoint, on the
lesion-disjoint split of the run that trained it:
- the image model's raw log-odds of P(malignant) for every val and test image (lesion.screening.scores: the table
  `python train.py scores.write=true` writes);
- stack.py on them with features=[age, sex, localization]: LightGBM cross-fitted on val (5 lesion-grouped folds; the
  image model never trained on val), calibrated and given its threshold there, applied to test; and the same stack
  without the image score (what the metadata alone says);
- test AUROC with bootstrap CIs over lesions (a lesion's images resampled together) of the image score, the
  metadata trees and the stack, and the paired CI of stack minus image on the same resamples.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from own_split import DEFAULT_ROOT, ROOT, own_split_predictions  # noqa: E402

from lesion.runs.config import to_plain  # noqa: E402
from lesion.screening.scores import scores_frame  # noqa: E402
from lesion.stats.patients import paired_difference, patient_figures  # noqa: E402
from stack import run_stack  # noqa: E402

FEATURES = ("age", "sex", "localization")


def stacked(root: str, scores: Path, out: Path, resamples: int, image: bool, extra: list[str]) -> pd.DataFrame:
    """stack.py's run on the scores table; its stack_scores.csv."""
    from hydra import compose, initialize_config_dir

    overrides = ["data=isic2018", f"data.root={root}", f"scores={scores}", f"features=[{','.join(FEATURES)}]"]
    overrides += ["patient_relative=false", "ugly_duckling=false", "engineered=false", "ablation=false"]
    overrides += [f"image_score={str(image).lower()}", f"bootstrap.resamples={resamples}", f"paths.output_dir={out}"]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        run_stack(to_plain(compose("stack", overrides + extra)))
    return pd.read_csv(out / "stack_scores.csv", dtype={"image_id": str}).set_index("image_id")


def fusion_report(ckpt: str, root: str, resamples: int, extra: list[str] = ()) -> dict:
    model, datamodule, predictions = own_split_predictions(ckpt, root)
    scores = scores_frame(model, predictions, datamodule.frames, None).set_index("image_id")
    missing = [c for c in FEATURES if c not in datamodule.frames["test"].columns]
    if missing:
        raise ValueError(f"the data has no {missing} columns: --root must hold HAM10000_metadata.csv beside the layout")
    with tempfile.TemporaryDirectory(prefix="lesion-fusion-") as tmp:
        scores.reset_index().to_csv(Path(tmp) / "scores.csv", index=False)
        fused = stacked(root, Path(tmp) / "scores.csv", Path(tmp) / "stack", resamples, True, list(extra))
        metadata = stacked(root, Path(tmp) / "scores.csv", Path(tmp) / "metadata", resamples, False, list(extra))
    test = scores[scores["split"] == "test"]
    frame = pd.concat(datamodule.frames.values()).assign(image_id=lambda f: f["image_id"].astype(str))
    lesions = frame.set_index("image_id").loc[test.index, "lesion_id"].to_numpy()
    y = test["y_malignant"].to_numpy()
    named = {"image": test["image_score"], "metadata": metadata.loc[test.index, "p_malignant"]}
    named["stacked"] = fused.loc[test.index, "p_malignant"]
    report = {"checkpoint": str(ckpt), "val_images": int((scores["split"] == "val").sum()), "test_images": len(y)}
    for name, score in named.items():
        got = patient_figures(score.to_numpy(), y, lesions, resamples)
        report[f"test/{name}_auroc"], report[f"test/{name}_auroc_ci"] = got["auroc"], got["auroc_ci"]
    paired = paired_difference(named["stacked"].to_numpy(), named["image"].to_numpy(), y, lesions, "auroc", resamples)
    return report | {"test/stacked_minus_image": paired["difference"], "test/stacked_minus_image_ci": paired["ci"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpts", nargs="+")
    parser.add_argument("--root", default=DEFAULT_ROOT)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--set", nargs="*", default=[], help="stack.py overrides, e.g. trees.min_data_in_leaf=5")
    args = parser.parse_args()
    reports = [fusion_report(ckpt, args.root, args.resamples, args.set) for ckpt in args.ckpts]
    header = ["checkpoint", "test AUROC: image (CI)", "metadata trees alone", "stack: image + metadata (CI)"]
    print("| " + " | ".join(header + ["stack - image (paired CI)"]) + " |")
    print("|---|---|---|---|---|")
    for r in reports:
        cells = [r["checkpoint"]]
        for name in ("image", "metadata", "stacked"):
            low, high = r[f"test/{name}_auroc_ci"]
            cells.append(f"{r[f'test/{name}_auroc']:.4f} ({low:.3f}-{high:.3f})")
        low, high = r["test/stacked_minus_image_ci"]
        cells.append(f"{r['test/stacked_minus_image']:+.4f} ({low:+.4f} to {high:+.4f})")
        print("| " + " | ".join(cells) + " |")
    if args.out:
        args.out.write_text(json.dumps(reports, indent=2) + "\n")


if __name__ == "__main__":
    main()
