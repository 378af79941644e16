"""Atomic checkpoints: a file is either the old complete checkpoint or the new complete one."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

__all__ = ["capture_rng", "load_checkpoint", "restore_rng", "save_checkpoint", "write_text_atomically"]


def _replace_atomically(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """``write`` a temporary file, flush it to disk, then rename it over ``path`` (an atomic
    replace), so an interruption never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` with ``torch.save``, atomically (the old file or the new one, never half of one)."""
    _replace_atomically(path, lambda f: torch.save(state, f))


def write_text_atomically(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) atomically, e.g. a results file that a reader may open at any time."""
    _replace_atomically(path, lambda f: f.write(text.encode()))


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`."""
    return torch.load(path, map_location=map_location, weights_only=False)


def capture_rng() -> dict[str, Any]:
    """The global RNG states of Python, NumPy, torch (and CUDA if present)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Restore the states captured by :func:`capture_rng`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
