"""The package's shape: layers -> models -> interop -> data -> train -> trained -> tasks -> commands, no
module importing one above it (at import time or later, inside a function); no import cycle among the
modules; few modules loose at the top; no private name imported from another module."""

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
MAX_TOP_MODULES = 8  # modules directly in xformer/ besides __init__.py; the rest live in sub-packages


def _top(module: str) -> str:
    """``xformer.data.image.images`` -> ``data``."""
    return module.split(".")[1]


def _module_name(path: Path) -> str:
    """``xformer/data/image/images.py`` -> ``xformer.data.image.images``; a package's ``__init__.py`` -> the package."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _import_nodes(source: str, module: str):
    """(imported module, names taken from it) for every import statement of ``source`` (the text of
    ``module``), wherever it is: at the top, inside a function (a lazy import), under ``TYPE_CHECKING``.
    Relative imports are resolved; only imports of xformer modules are kept."""
    package = module if MODULES.get(module, Path()).name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from ((a.name, ()) for a in node.names if a.name.split(".")[0] == "xformer")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}".rstrip(".")
            if base.split(".")[0] == "xformer":
                yield base, tuple(a.name for a in node.names)


def _imports(source: str, module: str) -> set[str]:
    """The xformer modules ``module`` imports: ``from a.b import c`` imports ``a.b.c`` when that is a module,
    else ``a.b``."""
    found = set()
    for base, names in _import_nodes(source, module):
        subs = {f"{base}.{n}" for n in names if f"{base}.{n}" in MODULES}
        found |= subs
        if not names or len(subs) < len(names):
            found.add(base)
    return found


def _graph() -> dict[str, set[str]]:
    """Module -> the xformer modules it imports (lazily or not)."""
    return {m: _imports(p.read_text(), m) & set(MODULES) - {m} for m, p in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path that ends where it starts) per strongly connected group of modules (Tarjan)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:  # v is the root of a group: the group is the stack down to v
            group = {stack.pop()}
            while v not in group:
                group.add(stack.pop())
            on_stack.difference_update(group)
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_path_within(graph, group) for group in groups]


def _path_within(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A cycle through the first module of ``group``, staying inside it (breadth-first, so a shortest one)."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & group):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in {sorted(group)}")


def test_every_module_has_a_layer():
    tops = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in PACKAGE.rglob("*.py")}
    assert tops - {"__init__"} <= set(RANK), sorted(tops - set(RANK) - {"__init__"})


def test_lazy_imports_count():
    """Imports inside functions (and relative ones) are seen, so a lazy import cannot hide a dependency."""
    source = ("def f():\n    from xformer.tasks import get_task\n    import xformer.commands.cli\n"
              "class A:\n    def g(self):\n        from . import base\n        from .registry import TASKS\n")
    assert _imports(source, "xformer.tasks.runner") == {
        "xformer.tasks", "xformer.commands.cli", "xformer.tasks.base", "xformer.tasks.registry"}


def test_no_import_points_up():
    upward = []
    for module, path in MODULES.items():
        if module == "xformer":  # the package root only re-exports load / load_tokenizer lazily
            continue
        me = _top(module)
        for imported in _imports(path.read_text(), module):
            if imported != "xformer" and RANK[_top(imported)] > RANK[me]:
                upward.append(f"{path.relative_to(PACKAGE.parent)} imports {imported}")
    assert not upward, "\n".join(upward)


def test_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e2"}, "e2": {"e"}}
    assert sorted(map(tuple, _cycles(graph))) == [("a", "b", "c", "a"), ("e", "e2", "e")]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    """No module imports one that (directly or through others, lazily or not) imports it back."""
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_few_modules_at_the_top():
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert len(loose) <= MAX_TOP_MODULES, f"{len(loose)} modules directly in xformer/: {', '.join(loose)}"


def test_no_private_name_is_imported_from_another_module():
    """A leading underscore means "this module's own": another module needing it needs a public name."""
    private = []
    for module, path in MODULES.items():
        for base, names in _import_nodes(path.read_text(), module):
            taken = [n for n in names if n.startswith("_") and not n.startswith("__")]
            private += [f"{path.relative_to(PACKAGE.parent)} imports {n} from {base}" for n in taken]
    assert not private, "\n".join(private)


def test_models_import_without_the_trainer_or_the_cli():
    code = ("import sys, xformer.models; bad = [m for m in sys.modules if m.startswith(('xformer.train.loop', "
            "'xformer.commands.cli', 'xformer.tasks', 'xformer.data', 'xformer.commands.recipe'))]; print(bad); assert not bad")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
