"""What every run directory shares: where it goes, atomic writes, devices, tensors moved for checkpoints, signals.

``rlmeta train`` and ``rlmeta meta-train`` both write one directory per run (config, checkpoints,
TensorBoard events, summary); these helpers keep them alike: an existing non-empty directory is
refused unless resuming or overwriting (a file in the way is named as a file), files are written
atomically (a kill mid-write leaves the previous file), and SIGTERM (``timeout``, job schedulers,
preemption) stops a run the way Ctrl-C does, so it writes its checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import torch

from rlmeta.heap import keep_freed_memory


def default_run_dir(*parts: str) -> Path:
    """``runs/<part>-<part>-...-<YYYYmmdd-HHMMSS>`` (``:`` and ``/`` in parts become ``_``)."""
    name = "-".join(p.replace(":", "_").replace("/", "_") for p in parts)
    return Path("runs") / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"


def check_new_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse an existing file, or a non-empty directory unless ``overwrite``, before anything is written."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"run directory {str(run_dir)!r} is an existing file, not a directory; choose another "
                         "--run-dir (rlmeta does not delete files it did not make)")
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise ValueError(
                f"run directory {str(run_dir)!r} already exists; pass --resume to continue it, "
                "--overwrite to replace it, or choose another --run-dir"
            )
        if not (run_dir / "config.json").is_file():
            raise ValueError(f"{str(run_dir)!r} is not an rlmeta run directory (it has no config.json); --overwrite "
                             "replaces runs only, never other folders: choose another --run-dir")


def prepare_run_dir(run_dir: Path, overwrite: bool, resume: bool) -> None:
    """Empty ``run_dir`` when overwriting a finished run, then make it and its ``checkpoints/``."""
    if run_dir.exists() and overwrite and not resume:
        shutil.rmtree(run_dir)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)


_TORCH_DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice (the physical cores), before anyone changes it


def set_threads(requested: int) -> int:
    """Set torch's intra-op threads: ``requested``, or with 0 the default, half of torch's own choice (its
    physical cores), at least 1 and at most 4 (``OMP_NUM_THREADS`` set: torch's choice as is); returns
    the number set.

    Measured on the 2-core machine (the main job, 300k steps; docs/benchmarks.md): torch's own choice
    takes 23 s alone but 200 s each when two such runs share the machine (oversubscribed threads spin);
    one thread takes 32 s alone and 30 s two at a time. Half the cores leaves room for a second run.

    Every run's entry point calls this first, so it also sets up the process's heap for tensors
    (:func:`rlmeta.heap.keep_freed_memory`: freed activations are reused, not faulted in afresh).
    """
    keep_freed_memory()
    if requested:
        threads = requested
    elif os.environ.get("OMP_NUM_THREADS"):  # the user chose torch's threads already: keep them
        threads = _TORCH_DEFAULT_THREADS
    else:
        threads = max(1, min(4, _TORCH_DEFAULT_THREADS // 2))
    torch.set_num_threads(threads)
    return threads


def check_device(device: str) -> torch.device:
    """``device`` as a torch device, or a ValueError when it asks for CUDA on a machine without it."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device here; use --device cpu")
    return torch.device(device)


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename over ``path``."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_json(obj: Any, path: Path) -> None:
    """Write ``obj`` as indented JSON to a temporary file, then rename over ``path``."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def atomic_text(text: str, path: Path) -> None:
    """Write ``text`` to a temporary file, then rename over ``path``."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(state: dict, folder: Path, step: int) -> Path:
    """Write ``ckpt-<step>.pt`` and ``latest.pt`` in ``folder`` (atomically); returns the first."""
    path = folder / f"ckpt-{step:012d}.pt"
    atomic_save(state, path)
    shutil.copyfile(path, folder / "latest.pt.tmp")
    os.replace(folder / "latest.pt.tmp", folder / "latest.pt")
    return path


def to_device(tree: Any, device: torch.device) -> Any:
    """``tree`` (nested dicts of tensors and plain values) with its tensors detached and on ``device``."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().to(device)
    if isinstance(tree, dict):
        return {k: to_device(v, device) for k, v in tree.items()}
    return tree


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as an interrupt (see :func:`sigterm_as_interrupt`)."""


def exit_code(error: BaseException) -> int:
    """The shell's exit status for a run stopped by ``error``: 143 for SIGTERM, 130 for Ctrl-C."""
    return 128 + (signal.SIGTERM if isinstance(error, Terminated) else signal.SIGINT)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated`, a ``KeyboardInterrupt`` (as Ctrl-C does), so a
    run saves its checkpoint."""

    def handler(signum: int, frame: Any) -> None:
        raise Terminated(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: signals cannot be handled here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
