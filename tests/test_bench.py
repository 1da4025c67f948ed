"""The benchmark scripts stay runnable: the GPU check on the CPU at toy size, and the frozen-stage proof."""

from __future__ import annotations

import subprocess
import sys

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


def test_study_gpu_script_runs_end_to_end_on_the_cpu_at_toy_size(tmp_path):
    from conftest import SHARED_ISIC2018

    if not SHARED_ISIC2018.is_dir():
        import pytest

        pytest.skip(f"packs the real images from {SHARED_ISIC2018}, which is absent (a fresh clone)")
    run = dict(cwd=ROOT, capture_output=True, text=True, check=True)
    subprocess.run(
        [sys.executable, "bench/pack_isic2018.py", "--root", str(SHARED_ISIC2018), "--out", str(tmp_path)], **run
    )
    rows = ["efficientnet_lite0", "resnet50_trunc_laurel_rw"]
    cmd = [
        sys.executable,
        "bench/study_gpu.py",
        "--smoke",
        "--device",
        "cpu",
        "--pack",
        str(tmp_path / "isic2018_pack.npz"),
    ]
    cmd += ["--cache", str(tmp_path / "cache.npy"), "--out", str(tmp_path), "--rows", *rows]
    out = subprocess.run(cmd, **run).stdout
    table = (tmp_path / "study_gpu.md").read_text()
    for row in rows:
        assert f"| {row} |" in table and "failed" not in table, out
    assert (
        "| efficientnet_lite0 | ImageNet |" in table
        and "| resnet50_trunc_laurel_rw | from scratch, every stage trained |" in table
    )


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
    """The CPU default channels_last must not change the arithmetic beyond rounding: same logits, and gradients no
    further from NCHW's than a 1e-6 change of the input moves them."""
    from gpu import memory_format_parity

    gap = memory_format_parity(backbone, 64, "cpu")
    assert gap["logits"] < 1e-4, gap
    # The floor is kernel-dependent: on an AVX2-only CPU, resnet50_trunc's NCHW and NHWC kernels sum in different
    # orders (relative gradient gap 7e-5 against a floor of 2.5e-6), which is still float32 rounding.
    assert gap["grads"] < max(5 * gap["floor"], 5e-4), gap


def test_external_report_scores_a_benign_malignant_folder_and_the_ablation_table_reads_runs(tmp_path):
    import json

    from conftest import TINY, compose_config
    from external import external_report
    from fakes import make_folder

    from train import train

    run = tmp_path / "ablation" / "A"
    run.mkdir(parents=True)
    train(compose_config("train", [*TINY, "trainer.max_epochs=1"], run))
    ckpt = json.loads((run / "metrics.json").read_text())["best_checkpoint"]
    report = external_report(ckpt, make_folder(tmp_path / "external", per_class=6), tta=True, resamples=20)
    assert report["images"] == 12 and report["malignant"] == 6 and 0.0 <= report["auroc"] <= 1.0
    assert report["auroc_ci"][0] <= report["auroc"] <= report["auroc_ci"][1]
    (run / "external.json").write_text(json.dumps(report))
    (tmp_path / "ablation" / "A.log").write_text("row A: 61.5 s wall, 1 KB peak RSS\n")
    out = subprocess.run(
        [sys.executable, "bench/ablation_table.py", str(tmp_path / "ablation")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    (row,) = [line for line in out.stdout.splitlines() if line.startswith("| A |")]
    assert f"| {report['auroc']:.3f} (" in row and "| 1.0 |" in row
