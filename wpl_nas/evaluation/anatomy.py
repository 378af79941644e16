"""Anatomy of forgetting (after Ramasesh et al., 2020): *where* in the network a candidate forgets.

Two probes, per stage of the skeleton (``stem``, ``stage1`` .. ``stageN``, ``logits``):

* **representation similarity**: linear CKA between a candidate's stage outputs on a fixed probe
  batch right after its training and after later candidates trained. 1 means the stage still
  computes the same representation (up to rotation and scale); lower values mean it drifted.
* **layer reset**: put one stage's weights on the candidate's path back to its snapshot (taken
  right after its training) and re-score it: how much of the lost accuracy that stage accounts for.

CKA(X, Y) = ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) on column-centred features (n samples × d features).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from wpl_nas.evaluation.scoring import accuracy
from wpl_nas.spaces import Architecture
from wpl_nas.supernet import Supernet

__all__ = ["linear_cka", "reset_stage", "stage_features", "stage_names", "stage_of"]


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA between two representations of the same ``n`` samples, ``(n, ...)`` each (flattened
    per sample). 1 for representations equal up to rotation and isotropic scale; NaN if either is
    constant across the samples.

    Raises:
        ValueError: the sample counts differ.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"linear_cka needs the same samples in both, but got {x.shape[0]} and {y.shape[0]}")
    x = x.reshape(x.shape[0], -1).double()
    y = y.reshape(y.shape[0], -1).double()
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    # With n < d the n x n Gram form is cheaper; both give the same value.
    if x.shape[0] < max(x.shape[1], y.shape[1]):
        kx, ky = x @ x.T, y @ y.T
        cross = (kx * ky).sum()
        norm = kx.norm() * ky.norm()
    else:
        cross = (y.T @ x).square().sum()
        norm = (x.T @ x).norm() * (y.T @ y).norm()
    return float(cross / norm) if norm > 0 else float("nan")


def stage_names(supernet: Supernet) -> list[str]:
    """``stem``, ``stage1`` .. ``stageN``, ``logits``: the depths the anatomy reports."""
    return ["stem", *(f"stage{i + 1}" for i in range(len(supernet.stages))), "logits"]


def stage_of(name: str) -> str | None:
    """The stage a parameter of the supernet belongs to (``stages.1.…`` -> ``stage2``;
    the heads -> ``logits``), or None."""
    parts = name.split(".")
    if parts[0] == "stem":
        return "stem"
    if parts[0] == "stages":
        return f"stage{int(parts[1]) + 1}"
    if parts[0] in ("head", "heads"):
        return "logits"
    return None


def _pooled(t: torch.Tensor, size: int) -> torch.Tensor:
    """Average-pool the spatial dims of ``(n, C, *spatial)`` to at most ``size`` each (float32)."""
    if t.dim() == 3:
        t = F.adaptive_avg_pool1d(t, min(size, t.shape[-1]))
    elif t.dim() == 4:
        t = F.adaptive_avg_pool2d(t, (min(size, t.shape[-2]), min(size, t.shape[-1])))
    return t.detach().float().clone()


def stage_features(supernet: Supernet, arch: Architecture, x: torch.Tensor, *,
                   spatial: int = 8) -> dict[str, torch.Tensor]:
    """Each stage's output for ``arch`` on ``x`` (evaluation conditions, as in :func:`accuracy`), its
    spatial dims average-pooled to at most ``spatial`` each: CKA on (n, C·spatial) features stays
    small for images, and a snapshot of it cheap to keep."""
    outputs: dict[str, torch.Tensor] = {}
    # A stage's output is its last block's (the supernet runs a stage's blocks one by one).
    modules: list[tuple[str, nn.Module]] = [("stem", supernet.stem), *(
        (f"stage{i + 1}", cast(nn.Sequential, m)[-1]) for i, m in enumerate(supernet.stages))]
    was_training = supernet.training
    supernet.eval()
    handles = [module.register_forward_hook(
        lambda _m, _i, out, name=name: outputs.__setitem__(name, _pooled(out, spatial))) for name, module in modules]
    try:
        with torch.inference_mode(), supernet.use(arch):
            outputs["logits"] = supernet(x).detach().float().clone()
    finally:
        for h in handles:
            h.remove()
        supernet.train(was_training)
    return outputs


@contextlib.contextmanager
def _swapped(params: dict[str, nn.Parameter], values: dict[str, torch.Tensor]) -> Iterator[None]:
    saved = {n: params[n].detach().clone() for n in values}
    with torch.no_grad():
        for n, v in values.items():
            params[n].copy_(v)
    try:
        yield
    finally:
        with torch.no_grad():
            for n, v in saved.items():
                params[n].copy_(v)


def reset_stage(supernet: Supernet, arch: Architecture, snapshot: dict[str, torch.Tensor], stage: str | None,
                x: torch.Tensor, y: torch.Tensor, *, batch_size: int,
                score: Callable[..., float] = accuracy) -> float:
    """``arch``'s score (``score``: accuracy unless given, e.g. a
    :class:`~wpl_nas.evaluation.scoring.Metric`'s ``compute``) on ``(x, y)`` with ``stage``'s
    weights on its path (every stage's if None) restored from ``snapshot`` (``{parameter name:
    value}``, taken right after its training); the supernet is left unchanged."""
    params = supernet.parameters_of(arch)
    values = {n: v for n, v in snapshot.items() if n in params and (stage is None or stage_of(n) == stage)}
    with _swapped(params, values):
        return score(supernet, arch, x, y, batch_size=batch_size)
