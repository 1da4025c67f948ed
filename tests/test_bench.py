"""The benchmark scripts stay runnable: the GPU check on the CPU at toy size, and the frozen-stage proof."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))

from frozen import autograd_profile, build  # noqa: E402


def test_gpu_check_runs_without_hydra_omegaconf_albumentations_or_lightning():
    code = (
        "import runpy, sys; "
        "sys.argv = ['bench/gpu.py', '--device', 'cpu', '--batch', '2', '--size', '64', '--steps', '1', "
        "'--warmup', '1', '--models', 'resnet50_trunc', '--modes', 'fp32', 'bf16_cl', '--matmul-n', '128', "
        "'--json', '']; "
        "runpy.run_path('bench/gpu.py', run_name='__main__'); "
        "names = ('hydra', 'omegaconf', 'albumentations', 'lightning'); "
        "print('IMPORTED', sorted(m for m in names if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "IMPORTED []" in out
    assert sum(line.startswith("resnet50_trunc ") for line in out.splitlines()) == 2 and "GFLOP/img" in out
    assert "resnet50_trunc: channels_last vs NCHW fp32, relative difference: logits" in out


def test_frozen_stages_keep_no_activations_and_get_no_gradients():
    frozen = autograd_profile(build("resnet50_trunc", 64, frozen=True), 64, 2)
    trainable = autograd_profile(build("resnet50_trunc", 64, frozen=False), 64, 2)
    assert frozen["frozen_modules"] > 0
    assert frozen["frozen_outputs_requiring_grad"] == 0 and frozen["frozen_params_with_grad"] == 0
    assert frozen["saved_for_backward_mb"] < 0.7 * trainable["saved_for_backward_mb"]
    assert frozen["train_gflop_per_img"] < trainable["train_gflop_per_img"]


def test_the_study_gpu_protocol_is_a_config_of_train_py_with_the_study_final_settings(tmp_path):
    from conftest import compose_config

    gpu = compose_config("train", ["experiment=study_gpu"], tmp_path)
    final = compose_config("train", ["experiment=study_final", "data=isic2018", "data.root=x"], tmp_path)
    for key in ("batch_size", "eval_batch_size", "transforms"):
        assert gpu["data"][key] == final["data"][key], key
    assert gpu["optimizer"] == final["optimizer"] and gpu["model"]["class_weights"] == [1, 10]
    assert gpu["callbacks"]["early_stopping"] == final["callbacks"]["early_stopping"]
    assert gpu["trainer"]["max_epochs"] == 30 and gpu["backbone"]["input_size"] == 224
    assert gpu["trainer"]["accelerator"] == "gpu" and gpu["trainer"]["precision"] == "bf16-mixed"
    import yaml

    def rows(name: str) -> str:  # the swept study rows (Hydra's own node is not in the composed job config)
        return yaml.safe_load((ROOT / "conf" / "experiment" / f"{name}.yaml").read_text())["hydra"]["sweeper"]["params"]

    assert rows("study_gpu")["study_row"] == rows("study_comparison")["study_row"]
    assert gpu["operating_point"] == final["operating_point"]  # the same threshold rule as every train.py run


def test_study_gpu_script_packs_the_split_and_trains_its_rows_through_train_py(tmp_path):
    """bench/study_gpu.sh on the CPU at toy size: the pack carries the official layout and the split, and the sweep
    trains each row with train.py on exactly that split."""
    import pandas as pd
    from fakes import make_isic2018

    root = make_isic2018(tmp_path / "isic2018", n=84)
    packed = tmp_path / "packed"
    _bench(["bench/pack_isic2018.py", "--root", str(root), "--out", str(packed)], tmp_path)
    assert len(list((packed / "ISIC2018_Task3_Training_Input").glob("*.jpg"))) == 84
    toy = ["trainer.accelerator=cpu", "trainer.precision=32-true", "model.channels_last=false", "data.num_workers=0"]
    toy += ["backbone.input_size=32", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "data.cache=false"]
    toy += [
        "operating_point.bootstrap_resamples=20",
        "trainer.enable_model_summary=false",
        "callbacks.progress_bar=null",
    ]
    toy += [
        "study_row=efficientnet_lite0,resnet50_trunc_laurel_rw",  # the command line wins over the config's rows
        f"hydra.sweep.dir={tmp_path}/s",
    ]
    env = {"PY": sys.executable, "DATA": str(packed)}
    _bench(["bench/study_gpu.sh", *toy], tmp_path, env=env, script="bash")
    summary = (tmp_path / "s" / "summary.md").read_text()
    assert sorted(p.name for p in (tmp_path / "s").iterdir() if p.name.isdigit()) == ["0", "1"]
    assert "efficientnet_lite0" in summary and "resnet50_trunc_laurel_rw" in summary and "failed" not in summary
    split = pd.read_csv(packed / "splits.csv").sort_values("image_id").reset_index(drop=True)
    for job in ("0", "1"):
        used = pd.read_csv(tmp_path / "s" / job / "splits.csv").sort_values("image_id").reset_index(drop=True)
        assert used[["image_id", "split"]].equals(split[["image_id", "split"]])


def test_overhead_script_interleaves_rounds_and_prints_the_ratio_table(tmp_path):
    import os

    from fakes import make_isic2018

    root = make_isic2018(tmp_path / "isic2018", n=84)
    cmd = [sys.executable, "bench/overhead.py", "--backbones", "efficientnet_lite0", "--size", "64", "--batch", "4"]
    cmd += ["--steps", "2", "--rounds", "2", "--real", str(root), "--real-workers", "0"]
    env = os.environ | {"LESION_CACHE": str(tmp_path / "cache"), "NO_ALBUMENTATIONS_UPDATE": "1"}
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True, env=env).stdout
    assert out.count("efficientnet_lite0 round ") == 2 and out.count("vs bare") == 4  # synthetic and real, twice
    (row,) = [line for line in out.splitlines() if line.startswith("| efficientnet_lite0 |")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 6 and all(float(c.split()[0]) > 0 for c in cells[1:])
    assert any((tmp_path / "cache").iterdir()), "the real-data run did not use the preprocessing cache"


@pytest.mark.parametrize("backbone", ["resnet50_trunc", "efficientnet_lite0"])
def test_channels_last_training_step_matches_nchw(backbone):
    """The CPU default channels_last must not change the arithmetic beyond rounding: same logits, and gradients whose
    error against a float64 step is of the order of NCHW's (a layout bug would be off by O(1))."""
    from gpu import memory_format_parity

    gap = memory_format_parity(backbone, 64, "cpu")
    assert gap["logits"] < 1e-4, gap
    # CPU channels_last BatchNorm rounds more than NCHW's in train mode (Lite0: 4x with 2 threads, 11x with 1).
    assert gap["nhwc_error"] < max(20 * gap["nchw_error"], 5e-4), gap


def test_external_report_scores_a_benign_malignant_folder_and_the_ablation_table_reads_runs(tmp_path):
    import json

    from conftest import TINY, compose_config
    from external import external_report
    from fakes import make_folder

    from train import train

    run = tmp_path / "ablation" / "baseline_224"
    run.mkdir(parents=True)
    train(compose_config("train", [*TINY, "trainer.max_epochs=1"], run))
    ckpt = json.loads((run / "metrics.json").read_text())["best_checkpoint"]
    report = external_report(ckpt, make_folder(tmp_path / "external", per_class=6), resamples=20, model_tta="flip")
    assert report["images"] == 12 and report["malignant"] == 6 and 0.0 <= report["auroc"] <= 1.0
    assert report["model_tta"] == "flip"
    assert report["auroc_ci"][0] <= report["auroc"] <= report["auroc_ci"][1]
    (run / "external.json").write_text(json.dumps(report))
    (tmp_path / "ablation" / "baseline_224.log").write_text("row baseline_224: 61.5 s wall, 1 KB peak RSS\n")
    out = subprocess.run(
        [sys.executable, "bench/ablation_table.py", str(tmp_path / "ablation")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    (row,) = [line for line in out.stdout.splitlines() if line.startswith("| baseline_224 |")]
    assert f"| {report['auroc']:.3f} (" in row and "| 1.0 |" in row


def _bench(args: list[str], tmp_path, env: dict | None = None, script: str = "python") -> str:
    import os

    env = os.environ | {"NO_ALBUMENTATIONS_UPDATE": "1", "LESION_CACHE": str(tmp_path / "cache")} | (env or {})
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # the shell scripts call `python`
    cmd = [sys.executable, *args] if script == "python" else ["bash", *args]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


# Each bench script as its docstring documents it, optional flags left out where they only add work, sized down.
def test_overhead_runs_without_real_data_as_documented(tmp_path):
    # The documented default --real-workers has two entries; without --real there are no real-data runs.
    args = ["bench/overhead.py", "--backbones", "efficientnet_lite0", "--steps", "2", "--rounds", "1", "--size", "64"]
    out = _bench(args + ["--batch", "4"], tmp_path)
    (row,) = [line for line in out.splitlines() if line.startswith("| efficientnet_lite0 |")]
    assert len(row.strip("|").split("|")) == 4 and "real" not in out.split("| backbone |")[1].splitlines()[0]


def test_cpu_options_script_prints_every_option_against_fp32(tmp_path):
    args = ["bench/cpu_options.py", "--backbones", "efficientnet_lite0", "--size", "64", "--batch", "2", "--steps", "1"]
    out = _bench(args + ["--options", "fp32", "channels_last"], tmp_path)
    rows = [line.split() for line in out.splitlines() if line.startswith("efficientnet_lite0 ")]
    assert [r[1] for r in rows] == ["fp32", "channels_last"] and float(rows[0][3]) == 1.0


def test_frozen_script_prints_its_table_and_the_speed_up(tmp_path):
    out = _bench(["bench/frozen.py", "--size", "64", "--batch", "2", "--steps", "1", "--rounds", "1"], tmp_path)
    assert out.count("\nfrozen ") == 1 and "\ntrainable " in out and "speed-up from freezing" in out


def test_mutation_script_finds_every_breakage_in_the_code_and_one_is_caught(tmp_path):
    assert "mutations, each found once in its file" in _bench(["bench/mutations.py", "--check"], tmp_path)
    out = _bench(["bench/mutations.py", "--only", "seeds as seed + epoch"], tmp_path)
    assert "seeds as seed + epoch" in out and "1 of 1 breakages caught" in out


def test_calibration_split_simulation_shows_the_erosion_and_the_separate_split_keeping_the_promise(tmp_path):
    args = ["bench/calibration_split.py", "--trials", "300", "--positives", "40", "--epochs", "1", "12"]
    out = _bench([*args, "--rho", "0.5", "--out", str(tmp_path / "sim")], tmp_path)
    rows = {int(r.split("|")[2]): r.split("|") for r in out.splitlines() if r.startswith("| 40 |")}
    # coverage: same split / corrected for the checkpoints compared / separate split
    one, twelve = ([float(v) for v in rows[k][4].split("/")] for k in (1, 12))
    assert min(one) >= 0.9 and twelve[2] >= 0.9  # a threshold no choice touched keeps the 95% promise (seeded)
    assert twelve[0] < twelve[2] - 0.1  # chosen among 12 checkpoints on the same split: it erodes
    assert twelve[1] >= 0.9  # ... unless certified at 1 - 0.05 / 12 (Bonferroni over the checkpoints)
    specificity = [float(v) for v in rows[12][6].split("/")]
    assert specificity[1] < specificity[0]  # the correction is paid in specificity (a lower threshold)
    assert (tmp_path / "sim.md").read_text().count("| 40 |") == 2


def test_record_run_keeps_a_runs_figures_and_renders_them(tmp_path):
    metrics = {"test/auroc": 0.9, "test_op/auroc_ci": [0.85, 0.95], "test_op/recall": 0.8,
               "test_op/recall_ci": [0.7, 0.9], "test_op/specificity": 0.75,
               "test_op/tp": 8, "test_op/fn": 2, "test_op/fp": 5, "test_op/tn": 15,
               "threshold": 0.1234, "val_op/recall": 0.88, "target_sensitivity": 0.85, "not_kept": 1,
               "operating_point/calibration_split": "calibration", "operating_point/val_positives": 50,
               "operating_point/val_detected": 47, "operating_point/sensitivity_lower_bound": 0.851}  # fmt: skip
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    args = ["bench/record_run.py", "a run", str(tmp_path / "metrics.json"), "--command", "python train.py x=1"]
    path = Path(_bench([*args, "--out", str(tmp_path / "runs"), "--commit", "abc1234"], tmp_path).strip())
    kept = json.loads(path.read_text())
    assert kept["commit"] == "abc1234" and "not_kept" not in kept["figures"] and kept["figures"]["threshold"] == 0.1234
    pooled = _bench(["bench/record_run.py", "--table", str(path)], tmp_path)
    assert "| a run: `python train.py x=1`" in pooled and "| 30 | 0.900 (0.850-0.950) | 0.800 (0.700-0.900) |" in pooled
    op = _bench(["bench/record_run.py", "--table", "--operating-point", str(path)], tmp_path)
    assert "| separate calibration split | 50 (47) | 0.851 | 0.85 | 0.1234 | 0.880 | 0.800 (0.700-0.900) |" in op
    log = tmp_path / "run.log"  # a run's output ending in GNU time's -v report, as /usr/bin/time -v writes it
    log.write_text("Epoch 3: 100%\n\tUser time (seconds): 2904.02\n\tSystem time (seconds): 91.23\n"
                   "\tElapsed (wall clock) time (h:mm:ss or m:ss): 1:25:36.96\n"
                   "\tMaximum resident set size (kbytes): 5450456\n"
                   "\tMinor (reclaiming a frame) page faults: 11438898\n")  # fmt: skip
    timed = Path(_bench([*args, "--out", str(tmp_path / "timed"), "--time-log", str(log)], tmp_path).strip())
    figures = json.loads(timed.read_text())["figures"]
    assert figures["wall_seconds"] == 5137.0 and figures["peak_rss_mb"] == 5323 and figures["system_seconds"] == 91.23
    assert figures["minor_page_faults"] == 11438898
    log.write_text("no report\n")
    again = [*args, "--out", str(tmp_path / "none"), "--time-log", str(log)]
    done = subprocess.run([sys.executable, *again], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode != 0 and "run.log: no GNU time -v report" in done.stderr


def test_latency_script_compares_eager_and_onnx_runtime(tmp_path):
    out = _bench(["bench/latency.py", "--backbones", "efficientnet_lite0", "--runs", "2"], tmp_path)
    (row,) = [line.split() for line in out.splitlines() if line.startswith("efficientnet_lite0 ")]
    assert len(row) == 9 and all(float(v) > 0 for v in row[1:])
    px, eager50, eager90, ort50, ort90, ratio, onnx_mb, weights_mb = map(float, row[1:])
    assert px == 224 and eager90 >= eager50 and ort90 >= ort50  # the pretrained input size; p90 above p50
    # the ratio of the columns beside it, up to their printed rounding (0.05 ms each, 0.005 for the ratio)
    assert ratio == pytest.approx(ort50 / eager50, abs=0.006 + 0.05 * (1 + ort50 / eager50) / eager50)
    assert onnx_mb == pytest.approx(weights_mb, rel=0.05)  # the exported graph holds the same weights


def test_isic2018_loader_script_runs_on_an_official_layout(tmp_path):
    from fakes import make_isic2018

    root = make_isic2018(tmp_path / "isic2018", n=84)
    args = ["bench/isic2018_loader.py", "--root", str(root), "--images", "8", "--size", "64", "--workers", "0"]
    rows = [line.split() for line in _bench(args, tmp_path).splitlines() if line.strip().startswith("0 ")]
    assert len(rows) == 1 and all(float(v) > 0 for v in rows[0][1:])


def test_isic2024_scale_script_generates_and_measures_a_small_set(tmp_path):
    # 20,000 images: 20 positives in 52 patients, enough for a test hold-out and 5 folds with positives in each
    out = _bench(["bench/isic2024_scale.py", "--workdir", str(tmp_path / "isic2024"), "--sizes", "20000"], tmp_path)
    (row,) = [line.split() for line in out.splitlines() if line.strip().startswith("20000 ")]
    assert len(row) == 6 and float(row[3]) > 0
    # one undersampled epoch (neg_ratio 20): every training positive and 20 negatives each, far below 20,000 images
    epoch = int(row[2])
    assert epoch % 21 == 0 and 21 <= epoch <= 20 * 21


def test_gpu_shell_script_runs_its_check_on_the_cpu(tmp_path):
    args = ["bench/gpu.sh", "--device", "cpu", "--batch", "2", "--size", "64", "--steps", "1", "--warmup", "1"]
    args += ["--models", "efficientnet_lite0", "--modes", "fp32", "--matmul-n", "128"]
    out = _bench(args, tmp_path, env={"OUT": str(tmp_path)}, script="bash")
    written = (tmp_path / "gpu_bench.txt").read_text()
    assert "\nefficientnet_lite0 " in written and out.endswith(written)  # the table, on stdout and in $OUT


def test_ablation_script_runs_its_rows_and_prints_the_table(tmp_path):
    from fakes import make_folder, make_isic2018

    root = make_isic2018(tmp_path / "isic2018", n=84)
    external = make_folder(tmp_path / "external", per_class=4)
    toy = "backbone.input_size=[32,32] trainer.max_epochs=1 trainer.limit_train_batches=2 data.num_workers=0"
    toy += " operating_point.bootstrap_resamples=20 trainer.enable_model_summary=false"
    rows = {"ROWS": "baseline_224 activation_cache"}
    env = {"ROOT": str(root), "EXTERNAL": str(external), "OUT": str(tmp_path / "ablation")} | rows
    out = _bench(["bench/ablation.sh"], tmp_path, env=env | {"PY": sys.executable, "EXTRA": toy}, script="bash")
    table = [line for line in out.splitlines() if line.startswith(("| baseline_224 |", "| activation_cache |"))]
    assert [line.split(" |")[0] for line in table] == ["| baseline_224", "| activation_cache"]
    assert (tmp_path / "ablation" / "activation_cache" / "external.json").is_file()


def test_quality_gate_calibrators_and_metadata_fusion_scripts_run_on_a_trained_checkpoint(tmp_path):
    import json

    import numpy as np
    import pandas as pd
    from conftest import TINY, compose_config
    from fakes import make_isic2018

    from train import train

    root = make_isic2018(tmp_path / "isic2018", n=140)
    # HAM10000_metadata.csv where age alone tells malignant (MEL, BCC, AKIEC) from benign: a prior fitted on the train
    # split's metadata must rank the test split perfectly, the image-only tiny model cannot
    ids = pd.read_csv(root / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_GroundTruth.csv")
    dx = ids[["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]].idxmax(axis=1)
    malignant = dx.isin(["MEL", "BCC", "AKIEC"]).to_numpy()
    meta = pd.DataFrame({"lesion_id": [f"HAM_{i // 2:07d}" for i in range(len(ids))], "image_id": ids["image"]})
    meta["dx"], meta["dx_type"] = dx.str.lower(), "histo"
    meta["age"] = np.where(malignant, 70.0, 30.0) + np.arange(len(ids)) % 5
    meta.loc[1, "age"] = np.nan  # an unknown age is a feature of its own, not a dropped row
    meta["sex"], meta["localization"] = np.where(np.arange(len(ids)) % 2, "male", "female"), "back"
    meta.to_csv(root / "HAM10000_metadata.csv", index=False)
    data = ["data=isic2018", f"data.root={root}", "data.val_fraction=0.25", "data.test_fraction=0.25"]
    overrides = [o for o in TINY if not o.startswith("data.")] + data + ["data.batch_size=8", "quality.enabled=false"]
    train(compose_config("train", overrides, tmp_path / "run"))  # no thresholds stored: the script fits them
    ckpt = json.loads((tmp_path / "run" / "metrics.json").read_text())["best_checkpoint"]
    out = _bench(["bench/quality_gate.py", ckpt, "--root", str(root), "--max-images", "8"], tmp_path)
    assert "fitted here" in out
    rows = {
        line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ") and "---" not in line
    }
    assert {"clean", "flat colour", "shrunk to 80x60", "apple or orange (not skin)"} <= set(rows)
    assert "too_small 8" in rows["shrunk to 80x60"]  # 80x60 is under min_side 100
    # bench/calibrators.py on the same checkpoint: every calibrator's row, and Platt keeps the uncalibrated ranking
    out = _bench(["bench/calibrators.py", ckpt, "--root", str(root)], tmp_path)
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    names = [r[1].strip().split(" (")[0] for r in rows]
    assert names == [
        "none",
        "multiclass temperature",
        "binary temperature",
        "Platt",
        "multiclass temperature, then Platt",
    ]
    # test AUROC: a Platt map is increasing (or the identity when none is), so it keeps the ranking it maps
    assert float(rows[3][-2]) == float(rows[0][-2]) and float(rows[4][-2]) == float(rows[1][-2])
    # bench/metadata_fusion.py: trees on the metadata alone rank the test split by age; the stack keeps that
    args = [
        "bench/metadata_fusion.py",
        ckpt,
        "--root",
        str(root),
        "--resamples",
        "20",
        "--out",
        str(tmp_path / "f.json"),
    ]
    out = _bench(args + ["--set", "trees.min_data_in_leaf=3", "rounds=40"], tmp_path)  # 35 val images to fit on
    assert any(line.startswith(f"| {ckpt} |") for line in out.splitlines())
    (report,) = json.loads((tmp_path / "f.json").read_text())
    assert report["test/metadata_auroc"] == 1.0 and report["test/stacked_auroc"] > 0.95
    assert report["test/stacked_minus_image"] > 0 and report["test_images"] + report["val_images"] < 140
    # bench/tta_views.py: each mode's score from the per-view logits is the one tta_logits gives that mode
    import torch
    from fakes import make_folder
    from tta_views import mode_scores, view_logits

    from lesion.models.loading import load_model
    from lesion.models.tta import tta_logits

    model = load_model(ckpt)
    x = torch.rand(5, 3, 32, 32)
    y = torch.tensor([0, 1, 0, 1, 1])
    logits, labels = view_logits(model.eval_net.eval(), [(x[:3], y[:3]), (x[3:], y[3:])], 5, "views")
    assert torch.equal(labels, y) and logits.shape[:2] == (5, 8)
    scores = mode_scores(model, logits)
    assert list(scores) == ["one", "flip", "dihedral"]
    with torch.no_grad():
        for mode, p in scores.items():
            logits = tta_logits(model.eval_net, x, None if mode == "one" else mode)
            torch.testing.assert_close(p, model.malignant_probability(logits.softmax(-1), platt=False))
    external = make_folder(tmp_path / "external", per_class=6)
    args = ["bench/tta_views.py", ckpt, "--root", str(root), "--external", str(external), "--resamples", "20"]
    out = _bench(args + ["--out", str(tmp_path / "t.json")], tmp_path)
    rows = [line for line in out.splitlines() if line.startswith(("| val", "| test", "| external"))]
    assert len(rows) == 3 and "| external (12 images) |" in out
    views = json.loads((tmp_path / "t.json").read_text())
    assert views["external"]["malignant"] == 6 and views["val"]["images"] == report["val_images"]
    for split in ("val", "test", "external"):
        r = views[split]
        assert all(0 <= r[f"{m}_auroc_ci"][0] <= r[f"{m}_auroc_ci"][1] <= 1 for m in scores), r
        assert r["views_per_second"] > 0 and -1 <= r["dihedral_minus_flip"] <= 1


def test_make_slice3d_writes_the_kaggle_layout_with_its_truth_outside_and_the_stack_bench_runs(tmp_path):
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    root, truth = tmp_path / "slice3d", tmp_path / "truth.csv"
    args = ["bench/make_slice3d.py", str(root), "--rows", "300", "--patients", "20", "--positives", "15"]
    out = _bench(args + ["--truth", str(truth)], tmp_path)
    assert "300 lesions of 20 patients (15 malignant)" in out
    assert sorted(p.name for p in root.iterdir()) == ["train-image.hdf5", "train-metadata.csv"]
    planted = pd.read_csv(truth)
    assert "image_signal" not in pd.read_csv(root / "train-metadata.csv").columns
    assert roc_auc_score(planted["target"], planted["image_signal"]) > 0.7
    again = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)
    assert again.returncode != 0 and "already holds a train-metadata.csv" in again.stderr
    # bench/stack_scale.py at a toy size: its timing line and its record
    args = ["bench/stack_scale.py", "--rows", "3000", "--patients", "60", "--positives", "60", "--resamples", "10"]
    out = _bench(args + ["--workdir", str(tmp_path / "stack"), "--out", str(tmp_path / "scale.json")], tmp_path)
    assert "3,000 lesions x 154 features, 5 folds:" in out
    record = json.loads((tmp_path / "scale.json").read_text())
    assert record["peak_rss_mb"] > 0 and record["seconds"] > 0 and 0 < record["oof/pauc80"] <= 0.2


def test_certification_rules_fit_each_rule_on_its_own_split_and_score_the_test_split(tmp_path):
    import numpy as np
    import pandas as pd
    from scipy.stats import beta

    rng = np.random.default_rng(0)
    rows = []
    for split, n in (("val", 400), ("calibration", 300), ("test", 400)):
        y = np.arange(n) % 4 == 0  # a quarter malignant
        p = 1 / (1 + np.exp(-(rng.normal(size=n) + 2.0 * y - 1)))
        rows += [
            (f"{split}_{i}", split, "x", int(m), float(s), float(s), bool(s > 0.5))
            for i, (m, s) in enumerate(zip(y, p))
        ]
    columns = ["image_id", "split", "label", "malignant", "p_malignant_uncalibrated", "p_malignant", "referred"]
    run = tmp_path / "run"
    run.mkdir()
    pd.DataFrame(rows, columns=columns).to_csv(run / "predictions.csv", index=False)
    metrics = {"target_sensitivity": 0.8, "operating_point/confidence": 0.95, "epochs": 4}
    (run / "metrics.json").write_text(json.dumps(metrics))
    _bench(["bench/certification_rules.py", str(run), "--resamples", "50", "--out", str(tmp_path / "rules")], tmp_path)
    found = {r["rule"]: r for r in json.loads((tmp_path / "rules.json").read_text())["rows"]}
    assert list(found) == ["val, uncorrected", "val, corrected for 4 epochs", "calibration split"]

    def needed(n: int, confidence: float) -> int:
        k = np.arange(1, n + 1)
        return int(np.nonzero(beta.ppf(1 - confidence, k, n - k + 1) >= 0.8)[0][0]) + 1

    assert (found["val, uncorrected"]["positives"], found["val, uncorrected"]["detected"]) == (100, needed(100, 0.95))
    assert found["val, corrected for 4 epochs"]["detected"] == needed(100, 1 - 0.05 / 4) > needed(100, 0.95)
    assert (found["calibration split"]["positives"], found["calibration split"]["detected"]) == (75, needed(75, 0.95))
    test = pd.DataFrame(rows, columns=columns).query("split == 'test'")
    for rule in found.values():  # each rule's test figures at its own threshold
        referred = test["p_malignant"] > rule["threshold"]
        assert rule["test_recall"] == pytest.approx(referred[test["malignant"] == 1].mean())
        assert rule["test_specificity"] == pytest.approx(1 - referred[test["malignant"] == 0].mean())


def test_evaluation_profile_prints_each_stage_against_the_training_step(tmp_path):
    from fakes import make_isic2018

    root = make_isic2018(tmp_path / "isic2018", n=84)
    tiny = ["backbone.input_size=[48,64]", "data.batch_size=4", "data.eval_batch_size=4", "data.num_workers=0"]
    args = ["bench/evaluation.py", "--root", str(root), "--images", "8", "--precisions", "32-true", "--override", *tiny]
    out = _bench(args + ["--out", str(tmp_path / "stages.json")], tmp_path)
    header = next(line for line in out.splitlines() if line.startswith("| stage |"))
    assert "retain_mb=0, 32-true" in header and "retain_mb=2048, 32-true" in header
    for stage in ("decode + preprocess", "forward, TTA", "whole (trainer.predict)", "predict.py (Screener)"):
        (row,) = [line for line in out.splitlines() if line.startswith(f"| {stage} |")]
        cells = [c.strip() for c in row.strip("|").split("|")[1:]]
        assert len(cells) == 2 and all(float(c.split()[0]) > 0 for c in cells)
    recorded = json.loads((tmp_path / "stages.json").read_text())
    assert [r["retain_mb"] for r in recorded["results"]] == [0, 2048] and recorded["results"][0]["views"] == 4
