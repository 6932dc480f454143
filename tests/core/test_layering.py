"""The package layout holds: every stage's dvc.yaml deps cover the code it runs, and no import circle.

A stage's code is every ``negset`` module its command module (``negset/STEP/step.py``)
loads when imported, plus every module reachable through ``negset`` imports
anywhere in those files (imports inside functions too: they run later, during
the step). Editing any of those files must rerun the stage, so each must lie
under one of the stage's ``deps`` in ``dvc.yaml``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

PACKAGE = REPO / "negset"


def module_file(name: str) -> Path | None:
    """The source file of a dotted ``negset`` module name (None when it is not one)."""
    parts = name.split(".")
    if parts[0] != "negset":
        return None
    base = REPO.joinpath(*parts)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def imports_of(path: Path) -> set[str]:
    """Every ``negset`` module a file imports, anywhere in it (``from negset.x import y``: x.y when a module)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "negset")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "negset":
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names if module_file(f"{node.module}.{a.name}"))
    return {m for m in out if module_file(m)}


def with_parents(name: str) -> set[str]:
    """A module and the packages above it (importing a.b.c runs a/__init__ and a/b/__init__)."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def static_closure(start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(with_parents(start))
    while todo:
        name = todo.pop()
        if name in seen or module_file(name) is None:
            continue
        seen.add(name)
        for dep in imports_of(module_file(name)):
            todo.extend(with_parents(dep) - seen)
    return seen


def loaded_modules(start: str) -> set[str]:
    """The ``negset`` modules a fresh interpreter has after importing ``start``."""
    code = (
        f"import importlib, json, sys; importlib.import_module({start!r}); "
        "print(json.dumps(sorted(m for m in sys.modules if m == 'negset' or m.startswith('negset.'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return {m for m in json.loads(out.stdout) if module_file(m)}


def is_marker(path: Path) -> bool:
    """A package ``__init__.py`` holding nothing but a docstring: it cannot change what a step does."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return path.name == "__init__.py" and all(
        isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str) for n in body
    )


def uncovered(files: set[Path], deps: list[str]) -> list[str]:
    """The files (relative to the repo) under none of ``deps``."""
    roots = [(REPO / d).resolve() for d in deps]
    return sorted(
        str(f.relative_to(REPO)) for f in files
        if not is_marker(f) and not any(f == r or r in f.parents for r in roots)
    )


def stage_deps() -> dict[str, list[str]]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: [d if isinstance(d, str) else next(iter(d)) for d in s.get("deps", [])] for name, s in stages.items()}


def stage_code(step: str) -> set[Path]:
    start = f"negset.{step}.step"
    names = static_closure(start) | loaded_modules(start)
    return {module_file(n).resolve() for n in names}


STAGES = ("ingest", "embed", "detect", "tag", "select", "export", "report")


def test_every_stage_has_a_command_module():
    assert set(stage_deps()) == set(STAGES)
    for step in STAGES:
        assert module_file(f"negset.{step}.step") is not None, step


@pytest.mark.parametrize("step", STAGES)
def test_stage_deps_cover_the_code_it_runs(step):
    missing = uncovered(stage_code(step), stage_deps()[step])
    assert not missing, f"dvc.yaml stage {step!r} runs code it does not depend on: {missing}"


def test_removing_a_dep_is_caught():
    """The check above has teeth: drop the core folder (or one file of another step) and it fails."""
    deps = stage_deps()["select"]
    code = stage_code("select")
    assert uncovered(code, deps) == []
    without_core = [d for d in deps if d != "negset/core"]
    assert "negset/core/config.py" in uncovered(code, without_core)
    without_store = [d for d in deps if d != "negset/embed/store.py"]
    assert uncovered(code, without_store) == ["negset/embed/store.py"]


def test_no_import_circle():
    """Module-to-module imports (lazy ones included) form no cycle."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        name = name.removesuffix(".__init__")
        modules[name] = {m for m in imports_of(path) if m != name and not name.startswith(m + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for dep in sorted(modules.get(name, ())):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if dep in modules and not state.get(dep):
                visit(dep)
        stack.pop()
        state[name] = 2

    for name in sorted(modules):
        if not state.get(name):
            visit(name)
