"""The floors of the house, checked on the source: no import goes up a floor, no import cycle, and no
function-local import of a project module without a comment saying why.

Floors (docs/architecture.md), bottom to top: the core (``rlmeta`` and its modules, torch only) and
``rlmeta.envs`` (numpy, numba, gymnasium, envpool, metaworld; nothing of ours) side by side, then
``rlmeta.agents`` (joins the two), then the command line ``rlmeta.cli``. import-linter would be the
well-kept tool for these contracts, but its graph builder (grimp) finds a package's modules by
walking the package's own folder, so it does not see ``rlmeta.envs`` and ``rlmeta.agents``, which
install from the sibling folders ``envs/`` and ``agents/``; this file reads every import with ``ast``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Source folder -> the package it installs as (pyproject.toml's package-dir).
PACKAGES = {"rlmeta": "rlmeta", "envs": "rlmeta.envs", "agents": "rlmeta.agents"}
# Which floors each floor may import.
ALLOWED = {
    "core": {"core"},
    "envs": {"envs"},
    "agents": {"core", "envs", "agents"},
    "cli": {"core", "envs", "agents", "cli"},
}


def floor(module: str) -> str:
    """The floor a project module sits on."""
    if module == "rlmeta.cli":
        return "cli"
    for name in ("envs", "agents"):
        if module == f"rlmeta.{name}" or module.startswith(f"rlmeta.{name}."):
            return name
    return "core"


def project_files(root: Path = ROOT) -> dict[str, Path]:
    """Every project module's name and file."""
    modules = {}
    for folder, package in PACKAGES.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = list(path.relative_to(root / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


def imports(path: Path, module: str, known: set[str]) -> list[tuple[str, int, bool, str]]:
    """``(imported project module, line, inside a function, source line)`` for every import in ``path``."""
    source = path.read_text()
    lines = source.splitlines()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, int, bool, str]] = []

    def targets(node: ast.stmt) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        assert isinstance(node, ast.ImportFrom)
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(anchor + ([base] if base else []))
        return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for name in targets(child):
                    while name and name not in known:  # a name inside a module: the module
                        name = name.rpartition(".")[0]
                    if name and name != "rlmeta":
                        found.append((name, child.lineno, in_function, lines[child.lineno - 1]))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(source), False)
    return found


def graph(root: Path = ROOT) -> dict[str, dict[str, list[tuple[int, bool, str]]]]:
    """Module -> imported project module -> where; importing ``a.b.c`` also runs ``a.b`` (its package)."""
    files = project_files(root)
    known = set(files)
    edges: dict[str, dict[str, list[tuple[int, bool, str]]]] = {m: {} for m in files}
    for module, path in files.items():
        for target, line, in_function, text in imports(path, module, known):
            parts = target.split(".")
            for i in range(2, len(parts) + 1):  # the packages on the way, then the module
                name = ".".join(parts[:i])
                if name in known and name != module and not module.startswith(name + "."):
                    edges[module].setdefault(name, []).append((line, in_function, text))
    return edges


def upward_imports(root: Path = ROOT) -> list[str]:
    """Every import that goes to a floor its module may not import."""
    problems = []
    for module, targets in graph(root).items():
        for target, where in targets.items():
            if floor(target) not in ALLOWED[floor(module)]:
                line = where[0][0]
                problems.append(f"{module} (line {line}, floor {floor(module)}) imports {target} (floor {floor(target)})")
    return problems


def cycles(root: Path = ROOT) -> list[list[str]]:
    """The import cycles among project modules (strongly connected components of more than one module)."""
    edges = {m: set(t) for m, t in graph(root).items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            connect(v)
    return found


def uncommented_local_imports(root: Path = ROOT) -> list[str]:
    """Function-local imports of project modules whose line has no comment saying why."""
    return [f"{module} line {line}: {text.strip()}"
            for module, targets in graph(root).items()
            for where in targets.values()
            for line, in_function, text in where
            if in_function and "#" not in text]


def test_every_package_is_read():
    modules = project_files()
    assert {"rlmeta.cli", "rlmeta.learner", "rlmeta.envs.core", "rlmeta.agents.train"} <= set(modules)
    assert all(floor(m) in ALLOWED for m in modules)


def test_no_import_goes_up_a_floor():
    assert upward_imports() == []


def test_no_import_cycle():
    assert cycles() == []


def test_function_local_imports_of_project_modules_say_why():
    assert uncommented_local_imports() == []


@pytest.mark.parametrize("where, line, problem", [
    ("rlmeta/returns.py", "from rlmeta.agents.networks import ActorCritic\n", "imports rlmeta.agents.networks"),
    ("envs/core.py", "from rlmeta.optim import sgd\n", "imports rlmeta.optim (floor core)"),
    ("agents/actor.py", "from rlmeta.cli import main\n", "imports rlmeta.cli (floor cli)"),
])
def test_the_check_fails_on_an_upward_import(tmp_path, where, line, problem):
    """A deliberate violation in a copy of the source is caught (the check can fail)."""
    for folder in PACKAGES:
        for path in (ROOT / folder).rglob("*.py"):
            target = tmp_path / path.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(path.read_text())
    violated = tmp_path / where
    violated.write_text(line + violated.read_text())
    assert any(problem in p for p in upward_imports(tmp_path))
    assert upward_imports() == []  # the real tree is untouched


def test_the_check_finds_cycles_and_silent_local_imports(tmp_path):
    for folder in PACKAGES:
        for path in (ROOT / folder).rglob("*.py"):
            target = tmp_path / path.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(path.read_text())
    returns = tmp_path / "rlmeta" / "returns.py"
    returns.write_text(returns.read_text() + "\n\ndef f():\n    from rlmeta.optim import sgd\n    return sgd\n")
    optim = tmp_path / "rlmeta" / "optim.py"
    optim.write_text("import rlmeta.returns\n" + optim.read_text())
    assert ["rlmeta.optim", "rlmeta.returns"] in cycles(tmp_path)
    assert any("rlmeta.returns line" in p for p in uncommented_local_imports(tmp_path))
