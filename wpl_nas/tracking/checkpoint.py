"""Atomic checkpoints: a file is either the old complete checkpoint or the new complete one.

Files a run reads back are untrusted (a run folder is shared, copied, downloaded): they are
loaded with ``torch.load(..., weights_only=True)``, which builds tensors and plain containers
only and never runs code from the file. Everything saved here is therefore tensors, numbers,
strings, lists, tuples and dicts; RNG states included.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from wpl_nas.errors import ConfigError, reason
from wpl_nas.tracking.signals import deferred

__all__ = ["capture_rng", "load_checkpoint", "read_json", "restore_rng", "save_checkpoint", "write_text_atomically"]


def _replace_atomically(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """``write`` a temporary file, flush it to disk, then rename it over ``path`` (an atomic
    replace), so an interruption never leaves a half-written file. During a search, Ctrl-C and
    SIGTERM wait for the write to end, so no ``*.tmp`` file is left behind either."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with deferred():
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


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu",
                    required: tuple[str, ...] = (), what: str = "checkpoint") -> dict[str, Any]:
    """Read a file written by :func:`save_checkpoint`, safely: tensors and plain containers only.

    Args:
        path: The file.
        map_location: Where its tensors go.
        required: Keys the file must hold.
        what: What the file is, for the error message (e.g. ``"anatomy snapshot"``).

    Raises:
        ConfigError: the file is missing, truncated, corrupt, not a dict with the ``required``
            keys, or holds anything but tensors and plain containers (a pickle that would run
            code is refused without running it).
    """
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except Exception as exc:
        raise ConfigError(f"{what} {path} cannot be read safely ({reason(exc, limit=200)}): it is truncated, "
                          "corrupt or was not written by wpl-nas; nothing in it was run. Restore it from a copy or "
                          "delete it to start that part again") from None
    if not isinstance(state, dict):
        raise ConfigError(f"{what} {path} holds a {type(state).__name__}, not the dict wpl-nas writes")
    missing = [key for key in required if key not in state]
    if missing:
        raise ConfigError(f"{what} {path} lacks {', '.join(missing)}: it was not written by this version "
                          "of wpl-nas, or not for this purpose")
    return state


def read_json(path: str | Path, *, what: str = "file") -> Any:
    """A JSON file of the run folder.

    Raises:
        ConfigError: the file is missing, not UTF-8 or not valid JSON (it names the file).
    """
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{what} {path} is not valid JSON ({exc}); restore it or delete it") from None


def capture_rng() -> dict[str, Any]:
    """The global RNG states of Python, NumPy, torch (and CUDA if present), as tensors and plain
    containers (so they load with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Restore the states captured by :func:`capture_rng`.

    Raises:
        ConfigError: ``state`` is not what :func:`capture_rng` returns.
    """
    try:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                             n["cached_gaussian"]))
        torch.set_rng_state(state["torch"].cpu())
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise ConfigError(f"the saved random-number-generator states are malformed ({exc})") from None
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
