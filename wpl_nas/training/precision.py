"""The fast path: mixed precision (autocast) and the channels_last memory format.

Both are resolved once, for a device, by :func:`resolve_precision` and :func:`resolve_channels_last`;
the trainer then wraps every forward pass (training, scoring, the strategies' importance estimates
and the retained pool's re-scores) in :func:`autocast`. The defaults (``auto``) change nothing on a
CPU: float32 and the default memory format, so a CPU run computes exactly what it did before.
"""

from __future__ import annotations

import contextlib

import torch

from wpl_nas.config import CHANNELS_LAST, PRECISIONS
from wpl_nas.errors import ConfigError

__all__ = ["CHANNELS_LAST", "PRECISIONS", "autocast", "resolve_channels_last", "resolve_precision", "to_format"]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(name: str, device: torch.device | str) -> str:
    """``name`` with ``auto`` resolved for ``device``: ``fp32``, ``bf16`` or ``fp16``.

    ``auto`` is bf16 on a CUDA device with bfloat16 support and fp32 everywhere else: a CPU's
    autocast is rarely faster than float32 (benchmarks/README.md), and fp32 keeps CPU runs identical
    to those before mixed precision existed.

    Raises:
        ConfigError: an unknown name, bf16 on a CUDA device without bfloat16, or a precision this
            device type's autocast does not support; the message names the valid choices.
    """
    device = torch.device(device)
    if name not in PRECISIONS:
        raise ConfigError(f"unknown precision {name!r}; valid choices: {', '.join(PRECISIONS)}")
    if name == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if name == "fp32":
        return name
    if device.type == "cuda" and name == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"precision 'bf16' was asked for, but {device} has no bfloat16 support; "
                          "valid choices here: fp32, fp16, auto")
    if not torch.amp.is_autocast_available(device.type):
        raise ConfigError(f"precision {name!r} needs autocast, which torch {torch.__version__} does not offer on "
                          f"{device.type}; valid choices here: fp32, auto")
    try:  # torch checks the dtype when the context is entered: ask it rather than keep a table
        with torch.autocast(device.type, dtype=_DTYPES[name]):
            pass
    except (RuntimeError, AssertionError) as exc:
        raise ConfigError(f"precision {name!r} is not supported by torch {torch.__version__}'s autocast on "
                          f"{device.type} ({exc}); valid choices here: fp32, auto") from None
    return name


def resolve_channels_last(name: str, device: torch.device | str) -> bool:
    """Whether 2-D (image) tensors use the channels_last memory format: ``auto`` is on for CUDA
    (where cuDNN's convolutions are faster in it, above all under autocast) and off elsewhere.

    Raises:
        ConfigError: ``name`` is not one of :data:`CHANNELS_LAST`.
    """
    if name not in CHANNELS_LAST:
        raise ConfigError(f"unknown channels_last {name!r}; valid choices: {', '.join(CHANNELS_LAST)}")
    return name == "on" or (name == "auto" and torch.device(device).type == "cuda")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[object]:
    """Autocast to ``precision``'s type on ``device`` (a resolved precision); a null context for
    fp32, so the default path (twice per training step) runs no autocast machinery at all."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def to_format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``x`` in the channels_last format when asked and it is a batch of images (4-D); else ``x``."""
    if channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x
