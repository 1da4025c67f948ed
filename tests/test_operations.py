"""Experiment operations: W&B offline runs, multirun summaries, Optuna and SLURM configs, resume after SIGKILL,
reproducibility, DDP metric sync, and checkpoints that load without Hydra."""

from __future__ import annotations

import csv
import json
import os
import pickle
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import yaml
from conftest import CONF, ROOT, TINY, compose_config
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from lesion.runs.loggers import wandb_run_id
from lesion.runs.trainer import SeedEachEpoch
from train import train

pytestmark = pytest.mark.slow
SMALL = [o for o in TINY if not o.startswith(("callbacks.progress_bar", "trainer.max_epochs"))] + [
    "callbacks.progress_bar=null",
]


def run(args: list[str], check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    env = os.environ | {"WANDB_MODE": "offline", "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONPATH": str(ROOT / "tests")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and done.returncode:
        raise AssertionError(f"train.py {' '.join(args)} failed:\n{done.stderr[-4000:]}")
    return done


def wandb_records(run_dir: Path) -> list:
    """The protobuf records of an offline W&B run file (LevelDB log framing: 32 KiB blocks, 7-byte headers)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    data, records, pending, i = path.read_bytes(), [], b"", 7
    while i + 7 <= len(data):
        left = 32768 - i % 32768
        if left < 7:
            i += left
            continue
        _, length, kind = struct.unpack("<IHB", data[i : i + 7])
        if length == 0 and kind == 0:
            i += left
            continue
        chunk, i = data[i + 7 : i + 7 + length], i + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def history_keys(records: list) -> set[str]:
    return {i.key or "/".join(i.nested_key) for r in records if r.HasField("history") for i in r.history.item}


def wait_for_history(run_dir: Path, prefixes: tuple[str, ...], timeout: float = 60.0) -> list:
    """The run file's records once every prefix starts a logged key (media and tables log several keys each).

    wandb.finish() returns once the W&B service has the records; its writer may still be flushing the file's tail,
    so a check straight after finish() can race it (seen once in CI)."""
    deadline = time.monotonic() + timeout
    while True:
        records = wandb_records(run_dir)
        logged = history_keys(records)
        missing = [p for p in prefixes if not any(k.startswith(p) for k in logged)]
        if not missing:
            return records
        if time.monotonic() > deadline:
            raise AssertionError(f"not in the W&B run file of {run_dir} after {timeout:.0f} s: {missing}")
        time.sleep(0.5)


def test_multirun_jobs_are_separate_wandb_runs_in_one_group_with_a_summary(tmp_path):
    sweep = tmp_path / "sweep"
    run(["-m", "optimizer.lr=1e-3,1e-4", "logger=wandb", f"hydra.sweep.dir={sweep}", "trainer.max_epochs=1", *SMALL])
    ids, groups = set(), set()
    for job in ("0", "1"):
        scalars = ("val/auroc", "val/recall", "train/loss_epoch", "test/auroc")
        records = wait_for_history(sweep / job, (*scalars, "test/predictions", "test/roc", "test/confusion_matrix"))
        logged = history_keys(records)
        for key in scalars:
            assert key in logged, key  # the exact scalar keys, not only their prefixes
        (meta,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        ids.add(meta.run_id)
        groups.add(meta.run_group)
        summary = {u.key for r in records if r.HasField("summary") for u in r.summary.update}
        config = {u.key for r in records if r.HasField("config") for u in r.config.update}
        assert "best_checkpoint" in summary and "config" in config
        assert not {"backbone", "optimizer", "data", "class_names"} & config  # the config once, not again as hparams
    assert len(ids) == 2 and groups == {"sweep"}
    table = pd.read_csv(sweep / "summary.csv")
    assert sorted(table["overrides"]) == ["optimizer.lr=0.0001", "optimizer.lr=0.001"]
    assert table["best val/loss"].is_monotonic_increasing and (sweep / "summary.png").stat().st_size > 0
    assert "| optimizer.lr=" in (sweep / "summary.md").read_text()
    # The study comparison's columns: val and test with CIs, the loss gap at the best epoch, how the weights began.
    for column in (
        "val/auroc",
        "test_op/auroc_ci",
        "test_op/recall_ci",
        "train_loss_at_best",
        "val_loss_at_best",
        "init",
    ):
        assert column in table, column
    assert table["test_op/auroc_ci"].str.fullmatch(r"\d\.\d{3}-\d\.\d{3}").all()


def test_a_failed_sweep_job_is_a_failed_row_and_the_sweep_goes_on(tmp_path):
    # The middle job raises (torch: "Invalid learning rate"); the basic sweeper used to re-raise it, with no summary.
    sweep = tmp_path / "sweep"
    done = run(["-m", "optimizer.lr=1e-3,-1.0,1e-4", f"hydra.sweep.dir={sweep}", *SMALL], check=False)
    assert done.returncode == 1, done.stderr[-3000:]  # max_failure_rate 0.0: scripts see the failure ...
    assert "1 of 3 jobs of the sweep failed" in done.stderr and "max_failure_rate" in done.stderr
    table = pd.read_csv(sweep / "summary.csv").set_index("job")  # ... after every job ran and the summary was written
    assert table.loc[1, "status"] == "failed" and "Invalid learning rate" in table.loc[1, "error"]
    assert table.loc[[0, 2], "status"].tolist() == ["done", "done"] and table.loc[[0, 2], "error"].isna().all()
    assert (sweep / "2" / "metrics.json").is_file() and "Traceback" in (sweep / "1" / "error.txt").read_text()
    assert "failed" in (sweep / "summary.md").read_text()
    tolerant = run(
        ["-m", "optimizer.lr=-1.0,1e-3", f"hydra.sweep.dir={tmp_path / 'tolerant'}", *SMALL]
        + ["hydra.callbacks.sweep_summary.max_failure_rate=0.5"]
    )
    assert tolerant.returncode == 0 and len(pd.read_csv(tmp_path / "tolerant" / "summary.csv")) == 2


def test_the_sweep_summary_is_rewritten_after_every_job(tmp_path):
    # A sweep stopped after its first job (killed, out of time) still has that job's row.
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from lesion.runs.sweeps import SweepSummary

    job = tmp_path / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- optimizer.lr=0.001\n")
    (job / ".hydra" / "config.yaml").write_text("monitor: val/auroc\nmonitor_mode: max\nbackbone: {pretrained: true}\n")
    (job / "metrics.json").write_text(json.dumps({"monitor": "val/auroc", "best_val_score": 0.8, "val/auroc": 0.8}))
    config = OmegaConf.create({"hydra": {"mode": RunMode.MULTIRUN, "sweep": {"dir": str(tmp_path)}}})
    SweepSummary().on_job_end(config=config, job_return=None)
    table = pd.read_csv(tmp_path / "summary.csv")
    assert table["status"].tolist() == ["done"] and table["best val/auroc"].tolist() == [0.8]


def test_optuna_search_maximises_the_monitored_score_and_each_trial_returns_its_own(tmp_path):
    from planted import planted_score

    sweep = tmp_path / "optuna"
    run(
        [
            "hparams_search=optuna",
            "hydra.sweeper.n_trials=3",
            f"hydra.sweep.dir={sweep}",
            "trainer.max_epochs=1",
            *SMALL,
            "callbacks.extra=[{_target_:planted.ScoreFromLr}]",  # val/planted: a known increasing function of lr
            "monitor=val/planted",
        ]
    )
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    table = pd.read_csv(sweep / "summary.csv")
    scores = table["best val/planted"]
    lrs = table["overrides"].str.extract(r"optimizer\.lr=([^ ]+)")[0].astype(float)
    assert len(table) == 3 and scores.nunique() == 3  # continuous lr draws: three distinct scores
    for score, lr in zip(scores, lrs):  # each trial returned its own monitored score
        assert score == pytest.approx(planted_score(lr), abs=1e-6)
    # maximised: the best trial is the one with the highest score (with direction: minimize it would be the lowest)
    assert results["best_value"] == pytest.approx(scores.max(), abs=1e-6)
    assert results["best_params"]["optimizer.lr"] == pytest.approx(lrs.max())


def test_slurm_launcher_composes_with_partition_gpus_and_time():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "hydra/launcher=submitit_slurm",
                "hydra.launcher.partition=gpu",
                "hydra.launcher.gpus_per_node=4",
                "hydra.launcher.timeout_min=240",
            ],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min) == ("gpu", 4, 240)


def epoch_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "csv" / "metrics.csv") as handle:
        return [r for r in csv.DictReader(handle) if r.get("val/loss")]


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    common = [
        *SMALL,
        "data.num_train=32",
        "trainer.max_epochs=3",
        "trainer.deterministic=true",
        "trainer.log_every_n_steps=1",
    ]
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    run([f"hydra.run.dir={whole}", *common])
    # 8 steps an epoch: step 12 is in the middle of the second epoch, after epoch 1's last.ckpt.
    killed = run(
        [f"hydra.run.dir={broken}", *common, "callbacks.extra=[{_target_:killer.KillAt,step:12}]"], check=False
    )
    assert killed.returncode == -9 and (broken / "checkpoints" / "last.ckpt").is_file()
    assert not (broken / "metrics.json").exists()

    state = torch.load(broken / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["callbacks"]
    assert [row["epoch"] for row in state["EpochHistory"]["rows"]] == [0]  # the history the resumed run continues
    run([f"hydra.run.dir={broken}", *common, "resume=auto"])
    rows = epoch_rows(broken)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    expected, got = json.loads((whole / "metrics.json").read_text()), json.loads((broken / "metrics.json").read_text())
    # The per-epoch history behind best_epoch and the losses at it survives the resume (it is in the checkpoint).
    for key in ("test/loss", "test/auroc", "test/recall", "best_val_score", "threshold", "temperature", "best_epoch"):
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key
    for key in ("train_loss_at_best", "val_loss_at_best"):
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key
    assert [r["val/loss"] for r in rows] == [r["val/loss"] for r in epoch_rows(whole)]


def test_wandb_run_id_is_kept_in_the_run_dir(tmp_path):
    first = wandb_run_id(tmp_path)
    assert wandb_run_id(tmp_path) == first and (tmp_path / "wandb_id.txt").read_text() == first


def test_same_seed_deterministic_runs_give_identical_metrics(tmp_path):
    overrides = [*SMALL, "trainer.max_epochs=2", "trainer.deterministic=true", "seed=7"]
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    a = train(compose_config("train", overrides, tmp_path / "a"))
    b = train(compose_config("train", overrides, tmp_path / "b"))
    for key in ("test/loss", "test/auroc", "best_val_score", "threshold", "temperature"):
        assert a[key] == b[key], key


def test_each_epoch_is_reseeded_from_seed_and_epoch_so_neighbouring_seeds_do_not_share_streams():
    def draws(seed: int, epoch: int) -> torch.Tensor:
        SeedEachEpoch(seed).on_train_epoch_start(SimpleNamespace(current_epoch=epoch), None)
        return torch.rand(8)

    assert torch.equal(draws(3, 2), draws(3, 2))  # a resumed epoch repeats the uninterrupted one
    assert not torch.equal(draws(3, 2), draws(4, 1))  # `seed + epoch` would make these one stream
    assert not torch.equal(draws(3, 2), draws(3, 1))
    with pytest.raises(ValueError, match="seed=-1"):
        SeedEachEpoch(-1)


def test_ddp_on_two_cpu_processes_syncs_val_metrics_and_losses(tmp_path):
    out = tmp_path / "ddp"
    # 8 val images split evenly over 2 ranks, so DistributedSampler adds no padding.
    run(
        [
            f"hydra.run.dir={out}",
            *SMALL,
            "data.num_val=8",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.max_epochs=1",
            "trainer.enable_model_summary=false",
        ]
    )
    (row,) = epoch_rows(out)
    trained = json.loads((out / "metrics.json").read_text())
    splits = pd.read_csv(out / "splits.csv")
    assert trained["train_images"] == (splits["split"] == "train").sum()  # both ranks' images, counted once
    import lightning as L

    from lesion.data import build_datamodule
    from lesion.models.module import LesionClassifier

    model = LesionClassifier.load_from_checkpoint(out / "checkpoints" / "last.ckpt", map_location="cpu")
    config = compose_config("train", [*SMALL, "data.num_val=8"], tmp_path)
    datamodule = build_datamodule(config["data"], model.data_config)
    single = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    (metrics,) = single.validate(model, datamodule=datamodule, verbose=False)
    # Every rank logs (and checkpoints / early-stops on) the value of the whole val set, the loss included.
    for key in ("val/loss", "val/auroc", "val/pauc80", "val/recall", "val/specificity", "val/accuracy", "val/tp"):
        assert float(row[key]) == pytest.approx(metrics[key], abs=1e-5), key


def test_checkpoint_loads_without_hydra_and_with_weights_only(tmp_path):
    train(compose_config("train", [*SMALL, "trainer.max_epochs=1"], tmp_path))
    ckpt = next((tmp_path / "checkpoints").glob("epoch*.ckpt"))
    code = (
        "import sys; sys.modules['hydra'] = None; sys.modules['omegaconf'] = None\n"
        "from lesion.models.module import LesionClassifier\n"
        f"m = LesionClassifier.load_from_checkpoint({str(ckpt)!r}, map_location='cpu', weights_only=True)\n"
        "print(type(m.hparams['backbone']).__name__, bool(m.deployment.calibrated), float(m.deployment.threshold))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    kind, calibrated, _ = done.stdout.split()
    assert kind == "dict" and calibrated == "True"


class PickledCode:
    """Unpickling it runs code: it touches a marker file. A checkpoint holding it must be refused, not run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_a_checkpoint_holding_pickled_code_is_refused_on_resume_and_when_calibrating(tmp_path):
    from lesion.models.module import LesionClassifier
    from lesion.screening.checkpoints import store_operating_point

    marker = tmp_path / "code_ran"
    evil = tmp_path / "last.ckpt"
    torch.save({"epoch": 0, "state_dict": {}, "loops": {}, "payload": PickledCode(marker)}, evil)
    with pytest.raises(pickle.UnpicklingError):
        train(compose_config("train", [*SMALL, f"ckpt_path={evil}"], tmp_path / "run"))
    backbone = compose_config("train", TINY, tmp_path / "model")["backbone"]
    with pytest.raises(pickle.UnpicklingError):
        store_operating_point(str(evil), LesionClassifier(backbone=backbone, class_names=["a", "b"], malignant=["b"]))
    assert not marker.exists()


def test_eval_with_wandb_logs_tables_and_images(tmp_path, monkeypatch):
    from eval import evaluate

    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir, eval_dir = tmp_path / "train", tmp_path / "eval"
    run_dir.mkdir(), eval_dir.mkdir()
    train(compose_config("train", [*SMALL, "trainer.max_epochs=1", "data.num_val=8", "data.num_test=8"], run_dir))
    best = json.loads((run_dir / "metrics.json").read_text())["best_checkpoint"]
    overrides = [f"ckpt_path={best}", "logger=wandb", "bootstrap.resamples=20", "robustness.max_images=8"]
    evaluate(compose_config("eval", [*overrides, "fairness.min_positives=1"], eval_dir))
    wanted = ("eval/table/fairness", "eval/table/robustness", "eval/plot/robustness", "eval/plot/roc")
    wait_for_history(eval_dir, (*wanted, "eval/plot/reliability", "test_op/recall"))
