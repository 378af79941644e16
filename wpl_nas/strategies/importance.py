"""Importance estimates for the quadratic strategies, on held-out batches of the current path.

Three signals, each from batch gradients or from per-sample gradients:

- the empirical Fisher E[g²] of the cross-entropy (WPL, EWC, online EWC);
- MAS's label-free E|∂‖f(x)‖²/∂θ|;
- ANPyC's label-free second-order estimate max(0, g·θ + ½θ²g²) of the output entropy.

Per-sample gradients come from ``torch.func.vmap`` over ``torch.func.grad`` of a functional
call of the supernet, in which each sample is its own batch of one; batch norm (batch
statistics, no running buffers) then normalises over the sample's own positions, so the
per-sample function is well defined for the convolutional spaces. :func:`per_sample_grads_loop`
computes the same thing one sample at a time; it is the reference the vectorised version is
tested and benchmarked against.

Per-sample gradients are computed in float32 whatever the precision (:func:`per_sample_grads`).
Under fp16 autocast the batch gradients are loss-scaled (``scale``, a
:class:`~wpl_nas.training.precision.MeasuringScale` from ``CandidateContext.measuring_scale``) and
unscaled in float32 before they are squared or averaged: unscaled, fp16 flushes activation
gradients under 6e-8 to zero and the importance comes out too small. A batch whose gradient is
not finite at any scale is left out of the average (with a warning). Without ``scale`` (fp32,
bf16) nothing is scaled: the gradients are computed exactly as they always were.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from wpl_nas.strategies.base import Batches
from wpl_nas.supernet import Supernet

if TYPE_CHECKING:
    from wpl_nas.training.precision import MeasuringScale

__all__ = [
    "PerSampleLoss", "cross_entropy", "empirical_fisher", "entropy_taylor_importance", "mas_importance",
    "output_entropy", "per_sample_grads", "per_sample_grads_loop", "squared_output_norm",
]

#: ``loss(logits, y)`` of one batch (used with a batch of one sample for per-sample gradients).
PerSampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y)


def squared_output_norm(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MAS's target: the squared L2 norm of the output, averaged over the batch (labels unused)."""
    return logits.square().sum(dim=1).mean()


def output_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """ANPyC's target: the softmax entropy of the output, summed over the batch (labels unused)."""
    return -(F.softmax(logits, dim=1) * F.log_softmax(logits, dim=1)).sum()


def per_sample_grads(supernet: Supernet, names: list[str], x: torch.Tensor, y: torch.Tensor,
                     loss: PerSampleLoss = cross_entropy) -> list[torch.Tensor]:
    """Gradients of ``loss`` for each sample separately: one ``(N, *shape)`` tensor per name.

    Vectorised with ``torch.func``; parameters outside ``names`` are held fixed. Always in float32,
    whatever the search's precision: torch.func's batched backward fails under autocast (torch 2.14,
    CPU, bf16 and fp16 alike: "expected scalar type ... but found Float"), and in float32 no
    gradient underflows, so no loss scale is needed; it is one measurement per candidate.
    """
    params = dict(supernet.named_parameters())
    wanted = {n: params[n].detach() for n in names}
    fixed = {n: p.detach() for n, p in params.items() if n not in wanted}

    def one(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(supernet, {**fixed, **p}, (xi.unsqueeze(0),))
        return loss(out, yi.unsqueeze(0))

    with torch.autocast(x.device.type, enabled=False):
        grads = vmap(grad(one), in_dims=(None, 0, 0))(wanted, x, y)
    return [grads[n] for n in names]


def per_sample_grads_loop(supernet: Supernet, names: list[str], x: torch.Tensor, y: torch.Tensor,
                          loss: PerSampleLoss = cross_entropy) -> list[torch.Tensor]:
    """:func:`per_sample_grads` one sample at a time with ``autograd.grad`` (the reference)."""
    params = dict(supernet.named_parameters())
    wanted = [params[n] for n in names]
    rows: list[list[torch.Tensor]] = [[] for _ in names]
    with torch.enable_grad():
        for i in range(len(x)):
            value = loss(supernet(x[i: i + 1]), y[i: i + 1])
            grads = torch.autograd.grad(value, wanted, allow_unused=True)
            for row, g, p in zip(rows, grads, wanted, strict=True):
                row.append(torch.zeros_like(p) if g is None else g)
    return [torch.stack(row) for row in rows]


def _batch_grads(supernet: Supernet, names: list[str], x: torch.Tensor, y: torch.Tensor,
                 loss: PerSampleLoss, scale: MeasuringScale | None) -> list[torch.Tensor] | None:
    """The batch gradient of ``loss`` (zeros where it does not reach); None if not finite at any scale."""
    params = dict(supernet.named_parameters())
    wanted = [params[n] for n in names]
    with torch.enable_grad():
        value = loss(supernet(x), y)
        if scale is None:
            grads: list[torch.Tensor | None] | None = list(torch.autograd.grad(value, wanted, allow_unused=True))
        else:
            grads = scale.grads(lambda s: torch.autograd.grad(value * s, wanted, allow_unused=True, retain_graph=True))
    if grads is None:
        return None
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, wanted, strict=True)]


def _average(supernet: Supernet, names: list[str], held_out: Batches, batch_size: int, batches: int,
             each: Callable[[torch.Tensor, torch.Tensor], list[torch.Tensor] | None], *,
             scale: MeasuringScale | None = None, what: str = "an importance estimate") -> list[torch.Tensor]:
    """Mean over held-out batches of ``each(x, y)`` (one tensor per name), in train mode; batches
    for which it is None (not finite at any fp16 scale) are left out, and ``scale`` warns of them."""
    params = dict(supernet.named_parameters())
    total = [torch.zeros_like(params[n]) for n in names]
    count = 0
    was_training = supernet.training
    supernet.train()  # batch norm on batch statistics, as during training
    try:
        for x, y in held_out(batch_size, batches):
            values = each(x, y)
            if values is None:
                continue
            torch._foreach_add_(total, values)
            count += 1
    finally:
        supernet.train(was_training)
    if count:
        torch._foreach_div_(total, float(count))
    if scale is not None:
        scale.report(what)
    return total


def _grads(supernet: Supernet, names: list[str], x: torch.Tensor, y: torch.Tensor, loss: PerSampleLoss, *,
           per_sample: bool, scale: MeasuringScale | None) -> list[torch.Tensor] | None:
    if per_sample:
        return per_sample_grads(supernet, names, x, y, loss)
    return _batch_grads(supernet, names, x, y, loss, scale)


def empirical_fisher(supernet: Supernet, names: list[str], held_out: Batches, *, batch_size: int,
                     batches: int, per_sample: bool, scale: MeasuringScale | None = None) -> list[torch.Tensor]:
    """Diagonal empirical Fisher E[g²] of the cross-entropy on the chosen path.

    ``per_sample``: the mean of squared per-sample gradients, the definition. Otherwise the
    batch approximation B·mean_b(ḡ_b²), which equals it where the mean gradient is ~0 (at a
    stationary point) and costs one backward per batch. ``scale``: fp16's loss scale (module docstring).
    """
    def each(x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor] | None:
        grads = _grads(supernet, names, x, y, cross_entropy, per_sample=per_sample, scale=scale)
        if grads is None:
            return None
        if per_sample:
            return [g.square().mean(0) for g in grads]
        return [g.square().mul_(float(len(y))) for g in grads]

    return _average(supernet, names, held_out, batch_size, batches, each, scale=scale, what="the Fisher")


def mas_importance(supernet: Supernet, names: list[str], held_out: Batches, *, batch_size: int, batches: int,
                   per_sample: bool, scale: MeasuringScale | None = None) -> list[torch.Tensor]:
    """MAS: E_x |∂‖f(x)‖²/∂θ| (per-sample), or |∂ mean_x ‖f(x)‖²/∂θ| per batch (cheaper, smaller).
    ``scale``: fp16's loss scale (module docstring)."""
    def each(x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor] | None:
        grads = _grads(supernet, names, x, y, squared_output_norm, per_sample=per_sample, scale=scale)
        if grads is None:
            return None
        if per_sample:
            return [g.abs().mean(0) for g in grads]
        return [g.abs() for g in grads]

    return _average(supernet, names, held_out, batch_size, batches, each, scale=scale, what="MAS's importance")


def entropy_taylor_importance(supernet: Supernet, names: list[str], held_out: Batches, *, batch_size: int,
                              batches: int, scale: MeasuringScale | None = None) -> list[torch.Tensor]:
    """ANPyC: max(0, g·θ + ½θ²g²) with g the gradient of the batch's summed output entropy,
    averaged over batches: the second-order estimate of the output change if θ_i were zeroed.
    ``scale``: fp16's loss scale (module docstring)."""
    params = dict(supernet.named_parameters())
    thetas = [params[n].detach() for n in names]

    def each(x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor] | None:
        grads = _batch_grads(supernet, names, x, y, output_entropy, scale)
        if grads is None:
            return None
        return [(g * theta + 0.5 * theta.square() * g.square()).clamp_min_(0.0)
                for g, theta in zip(grads, thetas, strict=True)]

    return _average(supernet, names, held_out, batch_size, batches, each, scale=scale,
                    what="ANPyC's importance")
