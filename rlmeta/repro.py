"""Numbers that reproduce on other machines: the CPU's kernels pinned to one instruction set.

A seed fixes a run bit for bit on one machine, not across machines: PyTorch's CPU build does its
matrix products in Intel MKL, which picks its kernels by the instruction set of the CPU it runs on
(AVX-512, AVX2, ...), and its own elementwise kernels are vectorized the same way. A last-bit
difference in one product grows into another trajectory within an RL run (measured: one PPO
CartPole lifetime ends at a return of 412.1 with MKL's AVX-512 kernels, 424.1 with its AVX2
kernels). A process whose environment holds :data:`PINNED` from its start uses MKL's AVX2 path
(MKL's conditional numerical reproducibility, ``MKL_CBWR``) and torch's AVX2 kernels, on any
x86-64 machine with AVX2, so a number computed that way is the same on every such machine.

The variables must be set before MKL first runs, so they apply to a new process:
:func:`run_pinned` calls a function in one and returns its (JSON) result. The shipped objectives'
checks are computed and re-checked this way (``scripts/ship_objective.py``,
``tests/agents/test_shipped.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

PINNED = {"MKL_CBWR": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
"""The environment of a pinned process: MKL's and torch's AVX2 kernels."""

_MARK = "RLMETA-PINNED-RESULT "
_RUNNER = (
    "import importlib, json, sys\n"
    "module, name = sys.argv[1].split(':')\n"
    "result = getattr(importlib.import_module(module), name)(*json.loads(sys.argv[2]))\n"
    f"print({_MARK!r} + json.dumps(result))\n"
)


def pinned_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with :data:`PINNED` set."""
    return {**(os.environ if base is None else base), **PINNED}


def run_pinned(function: str, *args: Any, timeout: float | None = None) -> Any:
    """``module:function(*args)`` called in a new Python process with :data:`PINNED`; its result.

    ``args`` and the result must be JSON values. A failure in the child raises RuntimeError with
    the end of its output.
    """
    if function.count(":") != 1 or not all(function.split(":")):
        raise ValueError(f"function must be 'module:name', got {function!r}")
    done = subprocess.run([sys.executable, "-c", _RUNNER, function, json.dumps(list(args))],
                          env=pinned_environment(), capture_output=True, text=True, timeout=timeout)
    results = [line[len(_MARK):] for line in done.stdout.splitlines() if line.startswith(_MARK)]
    if done.returncode != 0 or not results:
        raise RuntimeError(f"{function} failed in a pinned process (exit {done.returncode}):\n"
                           f"{(done.stdout + done.stderr)[-2000:]}")
    return json.loads(results[-1])


__all__ = ["PINNED", "pinned_environment", "run_pinned"]
