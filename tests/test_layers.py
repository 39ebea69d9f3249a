"""The layers are real: kernels ← modeling ← train / decoding / evaluation, and no import circle.

Each layer is imported in a fresh interpreter and the flythinker modules it loaded are checked
against what lies above it. A static pass over every project file (function-level imports
included) checks that the module graph has no cycle.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# source folder -> package it installs as (pyproject.toml's package-dir)
PACKAGE_DIRS = {"flythinker": "flythinker", "kernels": "flythinker.kernels", "modeling": "flythinker.modeling",
                "train": "flythinker.train"}  # fmt: skip

# What ``import flythinker`` itself loads: the transformers registration needs the config class.
ROOT_REGISTRATION = {"flythinker", "flythinker.modeling", "flythinker.modeling.auto_classes",
                     "flythinker.modeling.configuration_flythinker"}  # fmt: skip

ABOVE_MODELING = ("flythinker.train", "flythinker.decoding", "flythinker.evaluation", "flythinker.rewards",
                  "flythinker.cli", "flythinker.commands", "flythinker.predict", "flythinker.demo")  # fmt: skip


def _loaded_after(statement: str) -> set[str]:
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(m for m in sys.modules if m.startswith('flythinker'))))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


@pytest.mark.slow
def test_kernels_load_nothing_above_them():
    loaded = _loaded_after("import flythinker.kernels")
    above = {m for m in loaded if not m.startswith("flythinker.kernels")} - ROOT_REGISTRATION
    assert not above, f"import flythinker.kernels loaded {sorted(above)}"


@pytest.mark.slow
def test_modeling_loads_nothing_above_it():
    loaded = _loaded_after("import flythinker.modeling.modeling_flythinker, flythinker.modeling.heads")
    assert "flythinker.modeling.fusion" in loaded
    above = {m for m in loaded if _under(m, ABOVE_MODELING)}
    assert not above, f"the modeling layer loaded {sorted(above)}"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        ("flythinker.decoding", ("flythinker.train", "flythinker.evaluation", "flythinker.rewards", "flythinker.cli")),
        ("flythinker.evaluation", ("flythinker.train", "flythinker.decoding", "flythinker.cli")),
        ("flythinker.train", ("flythinker.decoding", "flythinker.evaluation", "flythinker.cli", "flythinker.commands")),
    ],
)  # fmt: skip
def test_upper_layers_do_not_reach_sideways(layer, forbidden):
    loaded = _loaded_after(f"import {layer}")
    bad = {m for m in loaded if _under(m, forbidden)}
    assert not bad, f"import {layer} loaded {sorted(bad)}"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    package = PACKAGE_DIRS[rel.parts[0]]
    parts = list(rel.with_suffix("").parts[1:])
    if parts and parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def _imports(path: Path, module: str) -> set[str]:
    """Every flythinker module ``path`` imports, at any depth of the file (TYPE_CHECKING blocks excluded)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join([*base, child.module] if child.module else base)
                else:
                    target = child.module or ""
                found.add(target)
                found.update(f"{target}.{a.name}" for a in child.names)
            visit(child)

    visit(tree)
    return {name for name in found if name.startswith("flythinker")}


def test_decoding_reaches_the_kernels_only_through_modeling():
    """The decoding engine fuses through ``model.fusion``; it never calls a kernel itself. (The one
    kernels module it may use is ``host_memory``: process set-up for the worker, not an op.)"""
    allowed = {"flythinker.kernels.host_memory"}
    for path in (ROOT / "flythinker" / "decoding").rglob("*.py"):
        direct = {
            m
            for m in _imports(path, _module_name(path))
            if m.startswith("flythinker.kernels")
            and not any(m == a or m.startswith(a + ".") for a in allowed)
        }
        assert not direct, f"{path.relative_to(ROOT)} imports {sorted(direct)}"


def test_no_import_circle_among_project_files():
    files = [p for folder in PACKAGE_DIRS for p in (ROOT / folder).rglob("*.py")]
    modules = {_module_name(p): p for p in files}
    graph = {
        name: {t for t in _imports(path, name) if t in modules and t != name}
        for name, path in modules.items()
    }
    # a package's __init__ importing its own children is not a circle through the child
    for name in graph:
        graph[name] = {
            t for t in graph[name] if not (t.startswith(name + ".") and modules[name].name == "__init__.py")
        }
        graph[name] = {
            t for t in graph[name] if not (name.startswith(t + ".") and modules[t].name == "__init__.py")
        }

    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state and (cycle := walk(name)):
            pytest.fail("import circle: " + " -> ".join(cycle))
