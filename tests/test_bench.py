"""The benchmark scripts stay runnable: the GPU check on the CPU at toy size, and the frozen-stage proof."""

from __future__ import annotations

import subprocess
import sys

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
    assert out.count("resnet50_trunc") == 2 and "GFLOP/img" in out


def test_frozen_stages_keep_no_activations_and_get_no_gradients():
    frozen = autograd_profile(build("resnet50_trunc", 64, frozen=True), 64, 2)
    trainable = autograd_profile(build("resnet50_trunc", 64, frozen=False), 64, 2)
    assert frozen["frozen_modules"] > 0
    assert frozen["frozen_outputs_requiring_grad"] == 0 and frozen["frozen_params_with_grad"] == 0
    assert frozen["saved_for_backward_mb"] < 0.7 * trainable["saved_for_backward_mb"]
    assert frozen["train_gflop_per_img"] < trainable["train_gflop_per_img"]
