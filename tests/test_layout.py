"""The package's import rules, read from the source with `ast` (nothing is imported or run).

Imports point down: cli -> api -> runtime -> engine -> formats -> tokenizer, with hub beside
runtime (hub -> formats), and config, errors and fileio at the bottom. The HTTP layer never
imports an engine library; runtime and engine never import Litestar; formats and tokenizer
import neither. Every import counts, also the ones inside functions, and no circles.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

BOTTOM = {"config", "errors", "fileio", "__init__"}
# package -> the packages it may import (the bottom modules are always allowed)
ALLOWED: dict[str, set[str]] = {
    "cli": {"api", "runtime", "engine", "hub", "formats", "tokenizer"},
    "api": {"runtime", "engine"},
    "runtime": {"engine", "formats", "tokenizer", "hub"},
    "hub": {"formats", "tokenizer"},
    "engine": {"formats", "tokenizer"},
    "formats": {"tokenizer"},
    "tokenizer": set(),
    "__main__": {"cli"},
}
for name in BOTTOM:
    ALLOWED[name] = set()
ENGINE_LIBRARIES = {"ctransformers", "llama_cpp"}
HTTP_LIBRARIES = {"litestar", "uvicorn", "starlette"}
# package -> third-party top-level names it must never import
FORBIDDEN: dict[str, set[str]] = {
    "api": ENGINE_LIBRARIES,
    "runtime": HTTP_LIBRARIES,
    "engine": HTTP_LIBRARIES,
    "formats": HTTP_LIBRARIES | ENGINE_LIBRARIES,
    "tokenizer": HTTP_LIBRARIES | ENGINE_LIBRARIES,
    "hub": HTTP_LIBRARIES | ENGINE_LIBRARIES,
    **{name: HTTP_LIBRARIES | ENGINE_LIBRARIES for name in BOTTOM},
}
# the api may use the engine's value types, never a backend module
API_ENGINE_MODULES = {"service.engine.sampling", "service.engine.base"}


def module_name(pkg_root: Path, path: Path) -> str:
    """service/api/app.py -> service.api.app; a package's __init__.py -> the package."""
    parts = list(path.relative_to(pkg_root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(pkg_root: Path) -> dict[str, set[str]]:
    """Every module of the package -> the absolute names it imports (submodules resolved)."""
    modules = {module_name(pkg_root, p): p for p in pkg_root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    names.add(sub if sub in modules else base)
        graph[mod] = names
    return graph


def layer(module: str) -> str:
    """service.api.app -> api; service.config -> config; service -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def violations(pkg_root: Path) -> list[str]:
    """Forbidden edges between layers and forbidden third-party imports, one line each."""
    top = pkg_root.name
    problems = []
    for mod, names in sorted(imports_of(pkg_root).items()):
        here = layer(mod)
        for name in sorted(names):
            first = name.split(".")[0]
            if first == top:
                there = layer(name)
                if there == here or there in BOTTOM or there in ALLOWED.get(here, set()):
                    if here == "api" and there == "engine" and name not in API_ENGINE_MODULES:
                        problems.append(f"{mod} imports {name}: the HTTP layer may use only {sorted(API_ENGINE_MODULES)}")
                    continue
                problems.append(f"{mod} imports {name}: {here} may not import {there}")
            elif first in FORBIDDEN.get(here, set()):
                problems.append(f"{mod} imports {name}: {here} must not import {first}")
    return problems


def cycles(pkg_root: Path) -> list[list[str]]:
    """Import circles between the package's modules (each found once, as a path)."""
    graph = imports_of(pkg_root)
    internal = {m: {n for n in names if n in graph and n != m} for m, names in graph.items()}
    # a package's __init__ importing its own submodules is how packages work, not a circle
    found: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(internal[m]):
            if state.get(n) == 1:
                found.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(internal):
        if m not in state:
            visit(m)
    return found


def test_imports_point_down():
    assert violations(ROOT / "service") == []


def test_no_import_circles():
    assert cycles(ROOT / "service") == []


def test_every_package_says_what_it_owns():
    for init in (ROOT / "service").rglob("__init__.py"):
        tree = ast.parse(init.read_text())
        doc = ast.get_docstring(tree)
        assert doc and "\n" not in doc.strip(), f"{init}: a one-line docstring saying what the package owns"


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "service"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_rules_catch_a_forbidden_edge_and_a_circle(tmp_path):
    root = _tree(tmp_path, {
        "__init__.py": '"""x"""\n',
        "api/__init__.py": "",
        "api/app.py": "import ctransformers\nfrom service.engine import ctransformers_backend\n",
        "engine/__init__.py": "",
        "engine/ctransformers_backend.py": "def f():\n    from litestar import get\n",
        "runtime/__init__.py": "",
        "runtime/a.py": "from service.runtime import b\n",
        "runtime/b.py": "from . import a\nfrom service.api import app\n",
    })
    problems = violations(root)
    assert "service.api.app imports ctransformers: api must not import ctransformers" in problems
    assert any("service.api.app imports service.engine.ctransformers_backend" in p for p in problems)
    assert "service.engine.ctransformers_backend imports litestar: engine must not import litestar" in problems
    assert "service.runtime.b imports service.api.app: runtime may not import api" in problems
    assert cycles(root) == [["service.runtime.a", "service.runtime.b", "service.runtime.a"]]


@pytest.mark.parametrize("module", ["service.api.app", "service.cli.main"])
def test_known_modules_are_seen(module):
    assert module in imports_of(ROOT / "service")
