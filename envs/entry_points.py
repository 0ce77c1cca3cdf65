"""gymnasium-style entry-point ids: ``envs.make("my_pkg.my_module:MyEnv", num_envs=..., seed=...)``.

The part before ``:`` is a module (not a registered backend prefix), the part after it an attribute
of that module (dots reach nested attributes): a ``gymnasium.Env`` subclass, or a factory that
returns a ``gymnasium.Env`` when called with the make's options. It is vectorized exactly as a
factory given to ``envs.register`` is.

Console scripts such as ``rlmeta train`` do not put the current directory on ``sys.path``; so when
the module itself cannot be found, the import is retried once with the current directory on
``sys.path`` (as uvicorn and gunicorn do), and the directory stays there for the rest of the
process (so that the module's own later imports, and gymnasium's async workers, find it too).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
import reprlib
import sys
from types import ModuleType
from typing import Any, Callable, Iterable

import gymnasium as gym

_DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


def is_entry_point(id: str) -> bool:  # noqa: A002 - gymnasium's word for it
    """Whether ``id`` has the form ``module.path:attribute`` (both parts dotted Python names)."""
    module_name, sep, attribute = id.partition(":")
    return bool(sep) and bool(_DOTTED_NAME.fullmatch(module_name)) and bool(_DOTTED_NAME.fullmatch(attribute))


def load_entry_point(id: str, backends: Iterable[str] = ()) -> Callable[..., gym.Env]:  # noqa: A002
    """Import ``module:attribute`` and return the env class or factory it names; bad ids raise ValueError.

    ``backends`` are the registered backend prefixes, named in the error when the module is not found.
    """
    module_name, _, attribute = id.partition(":")
    module = _import(module_name, id, [*backends])
    target: Any = module
    parts = attribute.split(".")
    for i, part in enumerate(parts):
        if not hasattr(target, part):
            owner = f"module {module_name!r}" if i == 0 else repr(f"{module_name}:{'.'.join(parts[:i])}")
            raise ValueError(f"{owner} has no attribute {part!r} (env id {id!r}){_nearby_names(target, part)}")
        target = getattr(target, part)
    if isinstance(target, gym.Env):
        raise ValueError(
            f"env id {id!r} names a gymnasium.Env instance ({type(target).__name__}); name its class or a factory "
            "instead, since rlmeta builds one env per sub-env"
        )
    if not callable(target):
        raise ValueError(
            f"env id {id!r} names {reprlib.repr(target)} (type {type(target).__name__}), which is not callable; "
            "it must name a gymnasium.Env subclass or a factory that returns a gymnasium.Env"
        )
    if target is gym.Env:
        raise ValueError(f"env id {id!r} names gymnasium.Env itself; name your subclass of it")
    if inspect.isclass(target) and not issubclass(target, gym.Env):
        hint = ""
        if issubclass(target, gym.vector.VectorEnv):
            hint = "; for a vector env use envs.register(name, factory, vectorized=True)"
        raise ValueError(
            f"env id {id!r} names the class {target.__name__}, which is not a gymnasium.Env subclass{hint}"
        )
    return target


def _import(module_name: str, id: str, backends: list[str]) -> ModuleType:  # noqa: A002
    """Import ``module_name``, retrying once with the current directory on ``sys.path`` if it is missing."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if not _is_missing(error, module_name):
            raise  # the module exists but one of its own imports failed: that traceback is the useful one
        missing = error.name
    cwd = os.getcwd()
    if not _on_sys_path(cwd):
        sys.path.insert(0, cwd)
        importlib.invalidate_caches()
        try:
            return importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if not _is_missing(error, module_name):
                raise
            missing = error.name
            sys.path.remove(cwd)  # nothing of it was found there: leave sys.path as it was
    top = module_name.split(".")[0]
    message = (
        f"env id {id!r}: no module named {missing!r} on sys.path nor in the current directory ({cwd}); "
        "run from the folder that holds it or add that folder to PYTHONPATH"
    )
    parent = sys.modules.get(missing.rpartition(".")[0]) if "." in missing else None
    if parent is not None:  # e.g. a package of the same name, found elsewhere first
        where = getattr(parent, "__file__", None) or [*getattr(parent, "__path__", [])]
        message += f" (the package {parent.__name__!r} was found at {where}, without {missing.rpartition('.')[2]!r})"
    if backends and "." not in module_name:
        near = difflib.get_close_matches(top, backends, n=1, cutoff=0.6)
        guess = f"did you mean {near[0] + ':' + id.partition(':')[2]!r}? " if near else ""
        message += f". {top!r} is not a backend prefix either ({guess}backends: {', '.join(backends)})"
    raise ValueError(message)


def _is_missing(error: ModuleNotFoundError, module_name: str) -> bool:
    """Whether ``error`` is about ``module_name`` itself (or a package above it), not one of its imports."""
    return error.name is not None and (module_name == error.name or module_name.startswith(error.name + "."))


def _on_sys_path(directory: str) -> bool:
    """Whether ``directory`` is already searched for imports (``""`` stands for the current directory)."""
    target = os.path.realpath(directory)
    return any(os.path.realpath(entry or os.curdir) == target for entry in sys.path if isinstance(entry, str))


def _nearby_names(target: Any, missing: str) -> str:
    """Error-message tail naming the attributes of ``target`` closest to ``missing`` (or its env classes)."""
    public = [name for name in dir(target) if not name.startswith("_")]
    near = difflib.get_close_matches(missing, public, n=5, cutoff=0.5)
    near += [n for n in public if n.lower() == missing.lower() and n not in near]
    if near:
        return f"; nearest names: {', '.join(near)}"
    env_classes = [
        name for name in public if inspect.isclass(value := getattr(target, name, None)) and issubclass(value, gym.Env)
    ]
    if env_classes:
        return f"; its gymnasium.Env classes: {', '.join(env_classes[:10])}"
    return f"; its public names: {', '.join(public[:20])}" if public else "; it has no public names"
