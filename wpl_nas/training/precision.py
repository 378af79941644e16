"""The fast path: mixed precision (autocast) and the channels_last memory format.

Both are resolved once, for a device, by :func:`resolve_precision` and :func:`resolve_channels_last`;
the trainer then wraps every forward pass (training, scoring, the strategies' importance estimates
and the retained pool's re-scores) in :func:`autocast`. The defaults (``auto``) change nothing on a
CPU: float32 and the default memory format, so a CPU run computes exactly what it did before.

In fp16 every backward pass is loss-scaled, because fp16 flushes gradients under 6e-8 to zero: the
candidate's by the trainer's :class:`torch.amp.GradScaler`, a strategy's own loss in a training step
by :func:`scaled_backward`, and every gradient a strategy only *measures* (a pruning score, the
Fisher and MAS importance and the synthetic sets' meta-gradients at consolidation) by
:class:`MeasuringScale`.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from wpl_nas.config import CHANNELS_LAST, PRECISIONS
from wpl_nas.errors import ConfigError

__all__ = ["CHANNELS_LAST", "PRECISIONS", "MeasuringScale", "autocast", "load_scaler_state", "resolve_channels_last",
           "resolve_precision", "scaled_backward", "scaled_grad", "to_format"]

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


def _inverse_scale(scaler: torch.amp.GradScaler, device: torch.device) -> torch.Tensor:
    # scale() of a one is the current scale as a tensor on the device (no host sync); inverted in
    # double as GradScaler.unscale_ does, so both unscale by the same float.
    return scaler.scale(torch.ones((), device=device)).double().reciprocal().float()


def scaled_backward(loss: torch.Tensor, *, scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer,
                    inputs: Sequence[torch.Tensor] | None = None) -> None:
    """Back-propagate ``loss`` under fp16 loss scaling and add its true gradient to ``.grad``.

    For a strategy's own loss in ``after_backward``, where the trainer has already unscaled the
    candidate's gradients (:meth:`torch.amp.GradScaler.unscale_`): an unscaled fp16 backward would
    flush small activation gradients to zero. ``loss`` is multiplied by the scaler's current scale,
    its gradients are unscaled and checked with the kernel the scaler uses, and any non-finite one
    is recorded in the flag the scaler's ``step`` reads for this optimiser: the step is then skipped
    and the scale backs off, exactly as when the candidate's own gradients overflow.

    Args:
        loss: A scalar computed with grad (under autocast).
        scaler: The trainer's gradient scaler, after ``unscale_(optimizer)`` this step.
        optimizer: The optimiser it unscaled.
        inputs: The tensors to differentiate [default: every parameter of ``optimizer`` that
            requires grad; those ``loss`` does not reach are left alone].

    Raises:
        RuntimeError: ``scaler`` has not unscaled ``optimizer``'s gradients this step (called outside
            ``after_backward``).
    """
    params = list(inputs) if inputs is not None else [
        p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
    # GradScaler keeps no public handle on the flag: this is the dict its step() and update() read.
    found_by_device: dict[torch.device, torch.Tensor] = scaler._per_optimizer_states[id(optimizer)][
        "found_inf_per_device"]
    if not found_by_device:
        raise RuntimeError("scaled_backward needs the trainer's unscale_ of this step: call it from after_backward")
    grads = torch.autograd.grad(scaler.scale(loss), params, allow_unused=True)
    pairs = [(p, g) for p, g in zip(params, grads, strict=True) if g is not None]
    if not pairs:
        return
    device = pairs[0][1].device
    found = found_by_device.setdefault(device, torch.zeros(1, device=device))
    with torch.no_grad():
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for _, g in pairs:
            by_dtype.setdefault(g.dtype, []).append(g)
        inverse = _inverse_scale(scaler, device)
        for group in by_dtype.values():
            torch._amp_foreach_non_finite_check_and_unscale_(group, found, inverse)
        for p, g in pairs:
            if p.grad is None:
                p.grad = g
            else:
                p.grad.add_(g)


class MeasuringScale:
    """The loss scale of gradients a strategy measures in fp16 (a pruning score, the Fisher or MAS
    importance and the synthetic sets' meta-gradients at consolidation), which no optimiser step
    follows, so no step can be skipped when they overflow.

    :meth:`grads` multiplies the measured output by the scale, so that small gradients survive fp16's
    range, and divides the gradients by it in float32 (the parameters' type; a power of two, so
    exactly). A non-finite result is computed again at half the scale, down to 1 (unscaled); the
    scale that worked is kept for the next call, so that a consolidation's batches pay for an
    overflow once. Should even the unscaled gradient be non-finite (the forward pass itself
    overflowed fp16), :meth:`grads` returns None and counts it in :attr:`skipped`: the caller leaves
    that batch out rather than fold infinities into a strategy's state, and :meth:`report` says so.

    Args:
        scale: The scale to start from: the trainer's scaler's current scale (a power of two; one
            below 1 starts from 1).
    """

    def __init__(self, scale: float) -> None:
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"a measuring scale must be a finite positive number, but got {scale=}")
        self.scale = max(1.0, float(scale))
        #: Calls whose gradient was not finite even unscaled (their batches were left out).
        self.skipped = 0
        #: Calls in all.
        self.calls = 0

    def grads(self, grads_of: Callable[[float], Sequence[torch.Tensor | None]]) -> list[torch.Tensor | None] | None:
        """The true gradients, from ``grads_of(s)``: the gradients of ``s`` times the measured output
        (``None`` for an input it does not reach). ``grads_of`` may be called more than once (keep the
        graph: ``retain_graph=True``); None if every scale down to 1 gave a non-finite gradient."""
        self.calls += 1
        while True:
            grads = list(grads_of(self.scale))
            present = [g for g in grads if g is not None]
            if not present:
                return grads
            with torch.no_grad():
                found = torch.zeros(1, device=present[0].device)
                inverse = torch.full((1,), 1.0 / self.scale, device=found.device)
                by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
                for g in present:
                    by_dtype.setdefault(g.dtype, []).append(g)
                for group in by_dtype.values():
                    torch._amp_foreach_non_finite_check_and_unscale_(group, found, inverse)
            if not found.item():  # one sync per measured batch, at consolidation only
                return grads
            if self.scale <= 1.0:
                self.skipped += 1
                return None
            self.scale = max(1.0, self.scale / 2.0)

    def report(self, what: str) -> None:
        """Warn (``RuntimeWarning``) if any batch of ``what`` was left out for a non-finite gradient."""
        if self.skipped:
            warnings.warn(f"fp16: {self.skipped} of {self.calls} batch(es) of {what} gave non-finite gradients even "
                          "unscaled (the forward pass overflowed fp16) and were left out of it; bf16 or fp32 "
                          "(--precision) has the range they need", RuntimeWarning, stacklevel=3)


def scaled_grad(output: torch.Tensor, inputs: Sequence[torch.Tensor], *,
                scaler: torch.amp.GradScaler) -> tuple[torch.Tensor | None, ...]:
    """``torch.autograd.grad(output, inputs, allow_unused=True)`` computed under fp16 loss scaling
    (:class:`MeasuringScale`, from the scaler's current scale): for gradients a strategy measures
    (a pruning score) rather than adds to the step. Should it be non-finite at every scale, the
    unscaled gradient is returned as it is: a measurement has no step to skip.
    """
    measured = MeasuringScale(scaler.get_scale()).grads(
        lambda s: torch.autograd.grad(output * s, inputs, allow_unused=True, retain_graph=True))
    if measured is None:
        return torch.autograd.grad(output, inputs, allow_unused=True)
    return tuple(measured)


def load_scaler_state(scaler: torch.amp.GradScaler, state: dict[str, Any]) -> None:
    """Load a checkpoint's scaler state into ``scaler`` after checking it (files read back are
    untrusted): a finite, positive scale and factors, a non-negative integer tracker.

    Raises:
        ValueError: a missing entry or a value out of range.
    """
    scale, growth, backoff = state["scale"], state["growth_factor"], state["backoff_factor"]
    interval, tracker = state["growth_interval"], state["_growth_tracker"]
    for name, value in (("scale", scale), ("growth_factor", growth), ("backoff_factor", backoff)):
        if not isinstance(value, float | int) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"gradient scaler {name} must be a finite positive number, but got {value!r}")
    for name, value, least in (("growth_interval", interval, 1), ("_growth_tracker", tracker, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f"gradient scaler {name} must be an integer >= {least}, but got {value!r}")
    scaler.load_state_dict(state)
