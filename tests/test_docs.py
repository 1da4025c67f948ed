"""The front page and the docs cannot rot: README commands run (toy size) or compose (real data), generated pages match
their data, every config key has a comment, the docs site builds strictly, and the import contract holds."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import CONF, ROOT, TINY, compose_config
from PIL import Image

sys.path[:0] = [str(ROOT / "docs"), str(ROOT / "bench")]

import config_reference  # noqa: E402
import generate  # noqa: E402
import record_run  # noqa: E402

README = ROOT / "README.md"
MARK = re.compile(r"<!-- readme-test: (toy|real data \((?P<paths>[^)]*)\)) -->")


def readme_blocks() -> list[tuple[str, list[str], list[str]]]:
    """(kind, data paths, commands) of every ```bash block of the README, a command per logical line (a trailing
    backslash continues it), comments dropped; kind is the `<!-- readme-test: ... -->` mark right above the block."""
    lines, blocks = README.read_text().splitlines(), []
    for i, line in enumerate(lines):
        if line.strip() != "```bash":
            continue
        mark = MARK.fullmatch(lines[i - 1].strip()) if i else None
        kind = "unmarked" if mark is None else ("toy" if mark.group(1) == "toy" else "real data")
        paths = [p.strip() for p in (mark["paths"] or "").split(",")] if mark and mark["paths"] else []
        body, commands, current = lines[i + 1 : lines.index("```", i + 1)], [], ""
        for raw in body:
            text = raw.split("  #")[0].rstrip() if "  #" in raw else raw.rstrip()
            current += text.removesuffix("\\").strip() + " "
            if not text.endswith("\\"):
                commands.append(" ".join(current.split()))
                current = ""
        blocks.append((kind, paths, [c for c in commands if c]))
    return blocks


def test_the_readme_is_a_landing_page_not_a_run_diary():
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines: move detail into docs/ (the site)"
    assert not re.search(r"\b(row [A-F]|session|earlier recipe|the recipe now)\b", README.read_text(), re.I)


def test_every_readme_command_block_is_marked_toy_or_real_data():
    blocks = readme_blocks()
    assert len(blocks) >= 5
    unmarked = [cmds for kind, _, cmds in blocks if kind == "unmarked"]
    assert not unmarked, f"README bash blocks without <!-- readme-test: toy|real data (...) --> above them: {unmarked}"


def _entry(command: str) -> tuple[str, list[str]]:
    """`python train.py -m a=1,2` -> ("train", ["a=1"]); placeholders <...> become a path."""
    words = shlex.split(command.replace("<", "PLACEHOLDER_").replace(">", ""))
    assert words[0] == "python" and words[1].endswith(".py"), command
    overrides = [w for w in words[2:] if w != "-m"]
    if "-m" in words:  # a multirun: each job composes one value of every swept key; the first stands for all
        overrides = [o if "[" in o else o.split(",")[0] for o in overrides]
    return words[1].removesuffix(".py"), overrides


def test_readme_real_data_commands_compose_with_the_configs(tmp_path):
    """Commands that need the real data are composed exactly as written (a renamed key or a missing config fails);
    their data folders are the ones the block names."""
    composed = 0
    for kind, paths, commands in readme_blocks():
        if kind != "real data":
            continue
        assert paths, "a real-data block names the data it needs"
        for command in commands:
            name, overrides = _entry(command)
            config = compose_config(name, overrides, tmp_path)
            assert config["task_name"] and "paths" in config  # composed as its entry point composes it
            root = (config.get("data") or {}).get("root")
            if root and not root.startswith("PLACEHOLDER"):
                assert any(root == p for p in paths), f"{command}: data.root {root} is not among {paths}"
            composed += 1
    assert composed >= 6


def _photos(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        pixels = rng.integers(0, 255, (160, 200, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"spot{i}.jpg")
    return folder


def _run(command: str, cwd: Path, best: Path | None, extra: list[str]) -> subprocess.CompletedProcess:
    name, _ = _entry(command)
    args = shlex.split(command)
    args = [sys.executable, str(ROOT / args[1]), *[a.replace("<best>.ckpt", str(best)) for a in args[2:]], *extra]
    env = os.environ | {"WANDB_MODE": "offline", "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONPATH": str(ROOT)}
    if name == "app":
        return _serve(args, cwd, env)
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"README: {command}\n{done.stderr[-3000:]}"
    return done


def _serve(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """Start the page as the README does (on a free port), fetch it once, stop it."""
    process = subprocess.Popen(args + ["port=0"], cwd=cwd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline, seen = time.time() + 300, ""
        while time.time() < deadline:
            line = process.stderr.readline()
            seen += line
            match = re.search(r"Uvicorn running on (http://\S+)", line)
            if match:
                page = urllib.request.urlopen(match.group(1) + "/", timeout=30).read().decode()
                assert "<html" in page.lower()
                return subprocess.CompletedProcess(args, 0, "", seen)
            if process.poll() is not None:
                break
        raise AssertionError(f"README: app.py did not start serving:\n{seen[-3000:]}")
    finally:
        process.terminate()
        process.wait(timeout=60)


@pytest.mark.slow
def test_readme_toy_commands_run_as_written(tmp_path):
    """Every toy block runs, in order, at toy size (TINY overrides appended to train.py): the model it trains is the
    `<best>.ckpt` the later commands use; `make` lines are checked to be Makefile targets doing what the README says."""
    best = None
    photos = _photos(tmp_path / "photos")
    assert photos.is_dir()
    for kind, _, commands in readme_blocks():
        if kind != "toy":
            continue
        for command in commands:
            if command.startswith("make "):
                target = command.split()[1]
                dry = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True)
                assert dry.returncode == 0 and ("train.py" in dry.stdout or "pytest" in dry.stdout), dry.stderr
                continue
            name, overrides = _entry(command)
            extra = [*TINY, "trainer.limit_train_batches=1"] if name == "train" else []
            if "hparams_search=optuna" in command:
                extra = [e for e in extra if not e.startswith("callbacks.")]
            _run(command, tmp_path, best, extra)
            if name == "train" and "-m" not in command.split() and "hparams_search" not in command:
                runs = sorted((tmp_path / "outputs" / "train" / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
                best = Path(json.loads((runs[-1] / "metrics.json").read_text())["best_checkpoint"])
    assert best is not None and any((tmp_path / "outputs" / "predict").rglob("predictions.csv"))
    assert any((tmp_path / "outputs" / "export").rglob("*.onnx"))
    assert any((tmp_path / "outputs" / "train" / "multiruns").rglob("summary.md"))


def test_every_config_key_has_a_comment():
    missing = config_reference.undocumented()
    assert not missing, "keys in conf/ without a comment:\n" + "\n".join(missing)


def test_a_key_without_a_comment_is_named_with_its_file_and_line(tmp_path, monkeypatch):
    shutil.copytree(CONF, tmp_path / "conf")
    (tmp_path / "conf" / "data" / "folder.yaml").write_text(
        (CONF / "data" / "folder.yaml").read_text() + "brand_new_key: 3\n"
    )
    monkeypatch.setattr(config_reference, "CONF", tmp_path / "conf")
    monkeypatch.setattr(config_reference, "ROOT", tmp_path)
    (missing,) = config_reference.undocumented()
    assert missing.startswith("conf/data/folder.yaml:") and missing.endswith(" brand_new_key")


def test_the_config_reference_shows_each_key_with_its_default_and_comment():
    text = config_reference.reference()
    assert "| `operating_point.target_sensitivity` | `0.8` | the study's goal |" in text
    assert "### `backbone=resnet50_trunc`" in text and "### `train.py`" in text


def test_the_generated_pages_and_the_readme_table_match_their_recorded_files():
    stale = [str(p) for p, text in generate.pages().items() if not p.is_file() or p.read_text() != text]
    assert not stale, f"{stale}: run `python docs/generate.py` and commit what it writes"


def test_a_table_row_comes_from_its_recorded_file():
    record = json.loads((ROOT / "docs" / "results" / "ablation" / "recipe_mixup.json").read_text())
    record["figures"]["test/auroc"] = 0.123
    (row,) = [line for line in record_run.ablation_table([record]).splitlines() if line.startswith("| the recipe")]
    assert "| 0.123 (" in row and f"({record['date']})" in row


def test_no_run_is_named_by_its_place_in_the_history():
    names = [json.loads(p.read_text())["name"] for p in (ROOT / "docs" / "results").rglob("*.json")]
    assert names and not [n for n in names if re.search(r"\b(row [A-F]|earlier|now|session)\b", n)]


@pytest.mark.slow
def test_the_docs_site_builds_strictly(tmp_path):
    """`mkdocs build --strict`: a broken link, a missing page or an API entry that names nothing fails."""
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ | {"NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / "site" / "reference" / "config" / "index.html").is_file()
    assert "LesionClassifier" in (tmp_path / "site" / "reference" / "api" / "index.html").read_text()


def test_the_import_contract_holds_and_fails_on_an_arrow_back_up(tmp_path):
    lint = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    done = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]
    shutil.copytree(ROOT / "lesion", tmp_path / "lesion", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    module = tmp_path / "lesion" / "stats" / "metrics.py"
    module.write_text(module.read_text() + "\nfrom lesion.models import module as _up  # noqa\n")
    env = os.environ | {"PYTHONPATH": str(tmp_path)}
    done = subprocess.run([lint], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert done.returncode == 1 and "lesion.stats.metrics -> lesion.models.module" in done.stdout
