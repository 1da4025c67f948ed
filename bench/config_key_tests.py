"""Which of the config keys users set most are tested through the entry point that reads them? For each key, the test
functions that set it as an override of that entry point's composed config (`compose_config("<entry>", [...,
"<key>=..."])` or the command line of a subprocess run of `<entry>.py`), found by reading tests/. A key set there is
at least driven the way a user drives it; whether the test asserts its effect is for the reader of the listed test.

    python bench/config_key_tests.py            # the table, and how many keys have such a test
    python bench/config_key_tests.py --missing  # only the keys without one
"""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SKIP = {"defaults", "task_name", "ckpt_path"}


def leaves(block: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in block.items():
        if key in SKIP:
            continue
        name = f"{prefix}{key}"
        keys += leaves(value, name + ".") if isinstance(value, dict) else [name]
    return keys


def load(path: str) -> dict:
    return yaml.safe_load((ROOT / "conf" / path).read_text()) or {}


def keys_by_entry() -> dict[str, list[str]]:
    """The keys users set most (issue #40's list): model.class_weights, operating_point.*, quality.*, app.*,
    predict.* and the adaptation strategy's keys."""
    train = ["model.class_weights"] + leaves(load("train.yaml")["operating_point"], "operating_point.")
    train += leaves(load("quality/default.yaml"), "quality.")
    strategy = sorted(
        {k for p in (ROOT / "conf/strategy").glob("*.yaml") for k in leaves(yaml.safe_load(p.read_text()))}
    )
    adapt = [f"strategy.{k}" for k in strategy if k != "name"] + leaves(
        load("adapt.yaml")["operating_point"], "operating_point."
    )
    return {"train": train, "app": leaves(load("app.yaml")), "predict": leaves(load("predict.yaml")), "adapt": adapt}


def tests_setting(entry: str, key: str) -> list[str]:
    """Test functions that compose `entry`'s config (or run `entry`.py, or build app.py's app) and set `key=` in it,
    in their own body or in a module-level constant or fixture they use."""
    pattern = re.compile(rf"""(?<![\w.]){re.escape(key)}=""")
    composes = re.compile(
        rf"""compose_config\(\s*["']{entry}["']|["']{entry}\.py["']""" + ("|build_app\\(" if entry == "app" else "")
    )
    found = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        source = path.read_text()
        tree = ast.parse(source)
        shared = {}  # module-level constants and fixtures a test may take its overrides from
        for node in tree.body:
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        shared[target.id] = ast.get_source_segment(source, node) or ""
            elif isinstance(node, ast.FunctionDef) and not node.name.startswith("test_"):
                shared[node.name] = ast.get_source_segment(source, node) or ""
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                body = ast.get_source_segment(source, node) or ""
                used = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {a.arg for a in node.args.args}
                text = body + "".join(shared.get(name, "") for name in used)
                if pattern.search(text) and composes.search(text):
                    found.append(f"{path.name}::{node.name}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--missing", action="store_true", help="list only the keys no test sets through its entry")
    args = parser.parse_args()
    total = tested = 0
    print("| entry point | key | tests setting it through the entry point's composed config |")
    print("|---|---|---|")
    for entry, keys in keys_by_entry().items():
        for key in keys:
            found = tests_setting(entry, key)
            total, tested = total + 1, tested + bool(found)
            if found and args.missing:
                continue
            print(f"| {entry} | `{key}` | {', '.join(found) or '**none**'} |")
    print(f"\n{tested} of {total} keys set by at least one test through their entry point")


if __name__ == "__main__":
    main()
