"""Layers -> models -> interop -> data -> train -> trained -> tasks -> commands: no module imports one above it, at import time or later."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "xformer"

# Lowest first; a module may import its own layer and those below. Sub-packages count as one layer.
LAYERS = [
    ["errors"],
    ["config"],
    ["layers", "distributed", "losses", "hub"],
    ["models"],
    ["interop"],
    ["data"],
    ["train"],
    ["trained"],
    ["tasks"],
    ["commands", "__main__"],
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _top(module: str) -> str:
    """``xformer.data.image.images`` -> ``data``."""
    return module.split(".")[1]


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("xformer."):
            found.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.module == "xformer":
            found.update(f"xformer.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("xformer."))
    return found


def test_every_module_has_a_layer():
    tops = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in PACKAGE.rglob("*.py")}
    assert tops - {"__init__"} <= set(RANK), sorted(tops - set(RANK) - {"__init__"})


def test_no_import_points_up():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).parts
        if parts == ("__init__.py",):  # the package root only re-exports load / load_tokenizer lazily
            continue
        me = parts[0].removesuffix(".py")
        for module in _imports(path):
            if RANK[_top(module)] > RANK[me]:
                upward.append(f"{path.relative_to(PACKAGE.parent)} imports {module}")
    assert not upward, "\n".join(upward)


def test_models_import_without_the_trainer_or_the_cli():
    code = ("import sys, xformer.models; bad = [m for m in sys.modules if m.startswith(('xformer.train.loop', "
            "'xformer.commands.cli', 'xformer.tasks', 'xformer.data', 'xformer.commands.recipe'))]; print(bad); assert not bad")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
