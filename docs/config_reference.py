"""python docs/config_reference.py [--check]: the configuration reference (docs/reference/config.md), generated from the
YAML files in conf/ themselves: every config group, file and key with its default and its comment. --check: exit 1
naming every key without a comment (tests/test_docs.py runs it)."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
OUT = ROOT / "docs" / "reference" / "config.md"
KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[\w@/.+-]+):(?P<rest>.*)$")


@dataclass
class Key:
    path: str  # dotted, from the file's top
    default: str
    comment: str
    line: int


def split_comment(text: str) -> tuple[str, str]:
    """A value and its inline comment: the first ` #` outside quotes."""
    quote = None
    for i, ch in enumerate(text):
        if ch in "'\"" and quote in (None, ch):
            quote = None if quote else ch
        elif ch == "#" and quote is None and (i == 0 or text[i - 1] in " \t"):
            return text[:i].strip(), text[i + 1 :].strip()
    return text.strip(), ""


def keys(path: Path) -> tuple[str, list[Key]]:
    """The file's header comment (its first comment lines) and its keys with their defaults and comments: a key's
    comment is on its line, or on the comment lines right above it."""
    lines = path.read_text().splitlines()
    header, above, stack, found = [], [], [], []
    in_header = True
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("#"):
            text = stripped.lstrip("#").strip()
            (header if in_header else above).append(text)
            continue
        if in_header and stripped.startswith("# @package"):
            continue
        in_header = False
        match = KEY.match(line)
        if not stripped or stripped.startswith("- ") or not match:
            above = [] if not stripped else above
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        value, comment = split_comment(match["rest"])
        comment = comment or " ".join(above)
        found.append(Key(".".join(k for _, k in stack), value, comment, number))
        above = []
    header = [h for h in header if not h.startswith("@package")]
    return " ".join(header), found


def package(path: Path) -> str:
    """Where a file's keys land in the composed config: the group's name (`data/isic2018.yaml`: `data.`), nothing for
    the entry points' files and `# @package _global_` overlays (`experiment/`, `study_row/`)."""
    if path.parent == CONF or "# @package _global_" in path.read_text():
        return ""
    return path.parent.name + "."


def comments() -> dict[str, str]:
    """Each composed key's comment where it is defined: a key that an overlay (experiment/) or a sibling file of its
    group repeats without a comment means what the commented definition says."""
    found: dict[str, str] = {}
    for path in sorted(CONF.rglob("*.yaml")):
        for key in keys(path)[1]:
            if key.comment:
                found.setdefault(package(path) + key.path, key.comment)
    return found


def documented(path: Path, key: Key, known: dict[str, str]) -> str:
    """The key's own comment, else the one where the composed key is defined (`(as defined in ...)` is not needed:
    the reference shows it under the key)."""
    composed = package(path) + key.path
    if key.comment or composed in known:
        return key.comment or known[composed]
    if "." not in composed and (CONF / composed).is_dir():
        return f"overrides of the `{composed}/` group's keys (below)"
    return ""


def undocumented() -> list[str]:
    """`file:line key` of every key in conf/ whose composed key has no comment anywhere in conf/ (a parent's comment
    does not cover its children)."""
    known, missing = comments(), []
    for path in sorted(CONF.rglob("*.yaml")):
        for key in keys(path)[1]:
            if key.path.split(".")[-1] == "defaults":
                continue
            if not documented(path, key, known):
                missing.append(f"{path.relative_to(ROOT)}:{key.line} {key.path}")
    return missing


def reference() -> str:
    out = [
        "# Configuration reference",
        "",
        "Generated from `conf/` by `python docs/config_reference.py` (`make docs`): every config group, file and key",
        "with its default and its comment. Override any key on the command line",
        "(`python train.py trainer.max_epochs=3`); pick a file of a group by its name",
        "(`python train.py backbone=resnet50_trunc`).",
        "",
    ]
    known = comments()
    top = sorted(p for p in CONF.glob("*.yaml"))
    groups = sorted(p for p in CONF.iterdir() if p.is_dir())
    out += ["## Entry points", ""]
    for path in top:
        out += section(path, f"`{path.stem}.py`" if (ROOT / f"{path.stem}.py").exists() else path.name, known)
    for group in groups:
        out += [f"## `{group.name}/`", ""]
        for path in sorted(group.glob("*.yaml")):
            out += section(path, f"`{group.name}={path.stem}`", known)
    return "\n".join(out).rstrip() + "\n"


def section(path: Path, title: str, known: dict[str, str], level: str = "###") -> list[str]:
    """A file's heading and its keys' table; `known`: every composed key's comment (`comments()`, read once)."""
    header, found = keys(path)
    out = [f"{level} {title}", "", f"`{path.relative_to(ROOT)}`" + (f": {escape(header)}" if header else ""), ""]
    rows = [k for k in found if k.path.split(".")[-1] != "defaults"]
    if rows:
        out += ["| key | default | what it is |", "|---|---|---|"]
        for k in rows:
            default = f"`{k.default}`" if k.default else ""
            shown = default.replace("|", "\\|")  # a code span: brackets stay as they are
            out.append(f"| `{k.path}` | {shown} | {escape(documented(path, k, known))} |")
        out.append("")
    return out


def escape(text: str) -> str:
    """Table-safe text: pipes escaped, and brackets, which Markdown would read as links."""
    return text.replace("|", "\\|").replace("[", "\\[").replace("]", "\\]")


def main() -> int:
    if "--check" in sys.argv:
        missing = undocumented()
        for m in missing:
            print(f"{m}: no comment; say what the key is on its line (`key: value  # what it is`) or above it")
        return 1 if missing else 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(reference())
    print(OUT.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
