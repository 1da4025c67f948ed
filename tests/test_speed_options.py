"""The speed options of a CPU run: allocator.retain_mb reuses freed activation buffers without page faults and every
entry point that runs the network applies it first; trainer.precision=auto is bf16 only where the CPU has it."""

from __future__ import annotations

import importlib
import platform
import statistics
import subprocess
import sys

import pytest

from tests.conftest import ROOT, compose_config

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A 256 MiB buffer allocated, touched and freed, round after round as batches do: the minor page faults of each of 7
# rounds after 4 of warm-up (glibc's heap takes a few rounds to settle into reusing the freed block).
ROUND_FAULTS = """
import resource, sys
import torch
from lesion.runs.allocator import retain_freed_memory
retain_freed_memory(int(sys.argv[1]))
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    torch.ones(2**26).sum()
for _ in range(7):
    start = faults()
    torch.ones(2**26).sum()
    print(faults() - start)
"""


def median_round_faults(retain_mb: int) -> float:
    out = subprocess.run([sys.executable, "-c", ROUND_FAULTS, str(retain_mb)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return statistics.median(int(line) for line in out.stdout.split())


@pytest.mark.skipif(not GLIBC, reason="allocator.retain_mb tunes glibc's malloc (Linux)")
def test_a_freed_buffer_is_reused_without_page_faults_when_retained():
    default, retained = median_round_faults(0), median_round_faults(2048)
    assert default > 2**28 // 4096 * 0.9  # premise: glibc's defaults fault the 256 MiB (65,536 pages) back each round
    assert retained < default / 20


def test_a_negative_size_names_the_key():
    from lesion.runs.allocator import retain_freed_memory

    with pytest.raises(ValueError, match="allocator.retain_mb=-1"):
        retain_freed_memory(-1)


class Applied(Exception):
    """Raised by the spy in place of the allocator call: the entry point got that far and no further."""


@pytest.mark.parametrize(
    "script, config, function",
    [
        ("train", "train", "train"),
        ("eval", "eval", "evaluate"),
        ("predict", "predict", "run_predict"),
        ("adapt", "adapt", "adapt"),
        ("app", "app", "build_app"),
    ],
)
def test_each_entry_point_applies_the_configured_allocator_first(script, config, function, tmp_path, monkeypatch):
    overrides = ["allocator.retain_mb=123"] + (["ckpt_path=missing.ckpt"] if config != "train" else [])
    if config in ("train", "adapt"):  # missing data: an entry point that skips the allocator fails at once, not trains
        overrides += ["data=folder", f"data.root={tmp_path / 'missing'}"]
    if config == "predict":
        overrides.append("input=missing.jpg")
    settings = compose_config(config, overrides, tmp_path)
    module = importlib.import_module(script)
    seen = []

    def spy(retain_mb):
        seen.append(retain_mb)
        raise Applied

    monkeypatch.setattr(module, "retain_freed_memory", spy)
    with pytest.raises(Applied):  # before the checkpoint or the data is read
        getattr(module, function)(settings)
    assert seen == [123]


@pytest.mark.parametrize("has_bf16, expected", [(True, "bf16-mixed"), (False, "32-true")])
def test_auto_precision_is_bf16_only_where_the_cpu_has_bf16(has_bf16, expected, tmp_path, monkeypatch):
    from lesion.runs import precision
    from lesion.runs.trainer import build_trainer

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: has_bf16)
    overrides = ["trainer.precision=auto", "callbacks.progress_bar=null", "allocator.retain_mb=0"]
    config = compose_config("train", overrides, tmp_path)
    assert build_trainer(config).precision == expected


def test_bf16_asked_on_a_cpu_without_it_trains_in_float32_with_a_warning(monkeypatch, caplog):
    from lesion.runs import precision

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    with caplog.at_level("WARNING", logger="lesion"):
        assert precision.resolve_precision("bf16-mixed") == "32-true"
    assert "trainer.precision=bf16-mixed" in caplog.text and "no bf16 instructions" in caplog.text
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert precision.resolve_precision("bf16-mixed") == "bf16-mixed"
    assert precision.resolve_precision("32-true") == "32-true"


def test_eval_py_resolves_auto_precision(tmp_path, monkeypatch):
    """eval.py builds its Trainer from the same resolution: `auto` never reaches Lightning, which would refuse it."""
    import eval as eval_script
    from lesion.runs import precision

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    built = []

    class Stop(Exception):
        pass

    def trainer(**kwargs):
        built.append(kwargs["precision"])
        raise Stop

    monkeypatch.setattr(eval_script.L, "Trainer", trainer)
    monkeypatch.setattr(eval_script, "load_model", lambda *a, **k: None)
    monkeypatch.setattr(eval_script, "_datamodule", lambda *a, **k: (None, False))
    config = compose_config("eval", ["ckpt_path=x.ckpt", "trainer.precision=auto", "allocator.retain_mb=0"], tmp_path)
    with pytest.raises(Stop):
        eval_script.evaluate(config)
    assert built == ["bf16-mixed"]
