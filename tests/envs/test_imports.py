"""The layering of ``rlmeta.envs``: core at the bottom, backends above it, the registry on top; no cycle.

Checked on the source with ``ast`` (every import of every ``envs/*.py``) and at run time in a fresh
interpreter (importing ``rlmeta.envs.core`` on its own loads no backend).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rlmeta import envs

ENVS_DIR = Path(envs.__file__).resolve().parent
MODULES = sorted(path.stem for path in ENVS_DIR.glob("*.py") if path.stem != "__init__")
# Third-party packages heavy enough to be imported inside a function, with a comment saying so.
DEFERRABLE = {"envpool", "metaworld", "minatar", "mujoco"}


def _project_module(name: str | None, level: int) -> str | None:
    """The ``envs`` module an import names (``core`` for ``rlmeta.envs.core``), ``""`` for the package, else None."""
    if level:  # a relative import is always one of ours
        return (name or "").split(".")[0]
    if name is None:
        return None
    for prefix in ("rlmeta.envs", "envs"):
        if name == prefix:
            return ""
        if name.startswith(prefix + "."):
            return name[len(prefix) + 1:].split(".")[0]
    return None


def _imports(module: str) -> tuple[list[tuple[ast.stmt, bool]], list[str]]:
    """Every import statement of ``envs/<module>.py`` with whether it is inside a function; and its lines."""
    source = (ENVS_DIR / f"{module}.py").read_text()
    tree = ast.parse(source)
    found: list[tuple[ast.stmt, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append((child, in_function))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return found, source.splitlines()


def _targets(node: ast.stmt) -> list[tuple[str | None, int]]:
    """The (module name, relative level) pairs one import statement loads."""
    if isinstance(node, ast.Import):
        return [(alias.name, 0) for alias in node.names]
    assert isinstance(node, ast.ImportFrom)
    if _project_module(node.module, node.level) == "":  # ``from rlmeta.envs import snake`` loads envs/snake.py
        return [(f"rlmeta.envs.{alias.name}", 0) for alias in node.names]
    return [(node.module, node.level)]


def _module_graph() -> dict[str, set[str]]:
    """Which ``envs`` modules each ``envs`` module imports, anywhere in the file (a hidden cycle counts too)."""
    graph: dict[str, set[str]] = {}
    for module in MODULES:
        found, _ = _imports(module)
        graph[module] = {
            target
            for node, _ in found
            for name, level in _targets(node)
            if (target := _project_module(name, level))
        }
    return graph


def test_every_envs_module_is_checked():
    assert {"core", "registry", "snake", "envpool_backend", "gym_backend", "metaworld_backend", "minatar_backend",
            "entry_points"} <= set(MODULES)


@pytest.mark.parametrize("module", ["__init__", *MODULES])
def test_no_function_local_import_of_project_modules(module):
    found, lines = _imports(module)
    for node, in_function in found:
        if not in_function:
            continue
        for name, level in _targets(node):
            where = f"envs/{module}.py:{node.lineno}"
            assert _project_module(name, level) is None and not (name or "").startswith("rlmeta"), (
                f"{where} imports {name!r} inside a function; import it at the top of the file"
            )
            assert name.split(".")[0] in DEFERRABLE, (
                f"{where} imports {name!r} inside a function; only {sorted(DEFERRABLE)} may be deferred"
            )
            comment_lines = lines[node.lineno - 2: node.lineno]  # the line above and the import's own line
            assert any("#" in line and "deferred" in line for line in comment_lines), (
                f"{where} defers {name!r} without a comment saying why"
            )


def test_module_graph_has_core_at_the_bottom_and_no_cycle():
    graph = _module_graph()
    assert graph["core"] == set(), f"envs/core.py must import nothing of rlmeta's, imports {graph['core']}"
    backends = ("snake", "envpool_backend", "gym_backend", "metaworld_backend", "minatar_backend", "entry_points")
    for backend in backends:
        assert "registry" not in graph[backend], f"envs/{backend}.py imports the registry (a cycle)"
    assert set(backends) <= graph["registry"]

    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join((*path, module))}"
        if module in done:
            return
        for target in graph.get(module, ()):
            visit(target, (*path, module))
        done.add(module)

    for module in graph:
        visit(module, ())


def _modules_loaded_by(module: str) -> list[str]:
    """In a fresh interpreter, import ``rlmeta.envs.<module>`` without running ``envs/__init__.py``."""
    code = textwrap.dedent(
        f"""
        import importlib, json, sys, types
        import rlmeta
        package = types.ModuleType("rlmeta.envs")  # a bare package: its __init__ would load the registry
        package.__path__ = [{str(ENVS_DIR)!r}]
        sys.modules["rlmeta.envs"] = package
        importlib.import_module("rlmeta.envs.{module}")
        heavy = {sorted(DEFERRABLE | {"numba"})!r}
        print(json.dumps(sorted(m for m in sys.modules if m.startswith("rlmeta.envs.") or m in heavy)))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_importing_core_alone_loads_no_backend():
    assert _modules_loaded_by("core") == ["rlmeta.envs.core"]


def test_importing_a_backend_loads_neither_the_registry_nor_its_heavy_dependency():
    loaded = _modules_loaded_by("metaworld_backend")
    assert "rlmeta.envs.registry" not in loaded
    assert "metaworld" not in loaded and "envpool" not in loaded and "mujoco" not in loaded
    assert set(loaded) == {"rlmeta.envs.core", "rlmeta.envs.envpool_backend", "rlmeta.envs.metaworld_backend"}
    loaded = _modules_loaded_by("minatar_backend")
    assert set(loaded) == {"rlmeta.envs.core", "rlmeta.envs.minatar_backend"}  # not minatar (GPL-3.0, optional)
