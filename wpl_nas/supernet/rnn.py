"""The supernet of ``rnn`` spaces: a word-level language model around the ENAS recurrent cell."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from wpl_nas.spaces import Architecture, SearchSpace
from wpl_nas.spaces._rnn import RNNSpace
from wpl_nas.supernet._base import SUPERNETS, Supernet

__all__ = ["MAX_HIDDEN_NORM", "RNNSupernet"]

#: The hidden state's norm is capped at this after every step (per sequence), as ENAS's PyTorch
#: port does: a cell of identity or relu nodes can otherwise blow its state up over a window.
MAX_HIDDEN_NORM = 25.0

_ACT: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh, "relu": torch.relu, "identity": lambda t: t, "sigmoid": torch.sigmoid,
}


@dataclass(frozen=True)
class _Path:
    """One architecture's cell, ready to run: node 1's activation, then per later node
    ``(node, input, activation, the edge's weights)``, looked up once, not at every time step."""

    first: Callable[[torch.Tensor], torch.Tensor]
    nodes: tuple[tuple[int, int, Callable[[torch.Tensor], torch.Tensor], nn.Linear], ...]
    loose: tuple[int, ...]


class RecurrentCell(nn.Module):
    """The ENAS cell: ``h_t = cell(x_t, h_{t-1})`` along the path it is given.

    Node 1: ``c = σ(x W_c + h W'_c)``, ``h_1 = c · act(x W + h W') + (1 − c) · h_{t−1}``; node ``j``
    reading node ``i``: ``c = σ(h_i V_c)``, ``h_j = c · act(h_i V) + (1 − c) · h_i``, with ``[V, V_c]``
    private to the edge ``i -> j`` (``edges["i->j"]["w"]``): shared by every candidate that uses it.
    """

    def __init__(self, space: RNNSpace, units: set[tuple[str, str]] | None) -> None:
        super().__init__()
        h = space.hidden
        self.x_proj = nn.Linear(space.embedding, 2 * h, bias=False)
        self.h_proj = nn.Linear(h, 2 * h, bias=False)
        edges = ([(f"{i}->{j}", "w") for j in range(2, space.nodes + 1) for i in range(1, j)]
                 if units is None else sorted(units))
        self.edges = nn.ModuleDict()
        for unit, variant in edges:
            self.edges[unit] = nn.ModuleDict({variant: nn.Linear(h, 2 * h, bias=False)})

    def edge(self, i: int, j: int) -> nn.Linear:
        """The weights ``[V, V_c]`` of edge ``i -> j``."""
        return cast(nn.Linear, cast(nn.ModuleDict, self.edges[f"{i}->{j}"])["w"])

    def forward(self, xw: torch.Tensor, h: torch.Tensor, path: _Path) -> torch.Tensor:
        """One step; ``xw`` is the step's input already through ``x_proj`` (done for the whole
        sequence at once by the supernet: one matrix product instead of one per step)."""
        act_in, gate_in = (xw + self.h_proj(h)).chunk(2, dim=-1)
        c = torch.sigmoid(gate_in)
        out = {1: c * path.first(act_in) + (1 - c) * h}
        for j, i, act, linear in path.nodes:
            a, g = linear(out[i]).chunk(2, dim=-1)
            c = torch.sigmoid(g)
            out[j] = c * act(a) + (1 - c) * out[i]
        h_new = torch.stack([out[j] for j in path.loose]).mean(0)
        # Rescale only the rows whose norm exceeds the cap (a no-op factor of 1 elsewhere).
        return h_new * (MAX_HIDDEN_NORM / h_new.norm(dim=-1, keepdim=True).clamp_min(MAX_HIDDEN_NORM))


class _Stage(nn.Sequential):
    """Holds the cell so the anatomy finds it as ``stages[0][-1]``; the supernet calls it per step."""


@SUPERNETS.register("rnn")
class RNNSupernet(Supernet):
    """Embedding -> the recurrent cell over the sequence -> a linear decoder to the vocabulary.

    Input ``(B, T)`` token ids; output ``(B, V, T)`` logits, so that ``F.cross_entropy(out, y)``
    with targets ``(B, T)`` is the mean per-token loss (V = ``num_classes``, the vocabulary).
    Each batch row is an independent window that starts from a zero hidden state (no state is
    carried between batches: the candidate's score does not depend on batch order); the hidden
    state's norm is capped at :data:`MAX_HIDDEN_NORM`.
    Build it as ``Supernet(space, ...)``; see :class:`Supernet` for the arguments.
    """

    def __init__(self, space: SearchSpace, **kwargs: Any) -> None:
        super().__init__(space, **kwargs)
        rnn = cast(RNNSpace, space)
        self.stem = nn.Embedding(self.num_classes, rnn.embedding)
        units = self.path_units(self.fixed) if self.fixed is not None else None
        self.stages = nn.ModuleList([_Stage(RecurrentCell(rnn, units))])
        self.make_heads(lambda: nn.Linear(rnn.hidden, self.num_classes))

    def path_units(self, arch: Architecture) -> set[tuple[str, str]]:
        return {(f"{i}->{j}", "w") for j, i in cast(RNNSpace, self.space).inputs(arch).items()}

    def plan(self, arch: Architecture) -> _Path:
        rnn = cast(RNNSpace, self.space)
        cell = self._cell()
        return _Path(_ACT[arch["n1/act"]],
                     tuple((j, i, _ACT[arch[f"n{j}/act"]], cell.edge(i, j)) for j, i in rnn.inputs(arch).items()),
                     tuple(rnn.loose_ends(arch)))

    def _cell(self) -> RecurrentCell:
        return cast(RecurrentCell, cast(nn.Sequential, self.stages[0])[-1])

    def forward_path(self, x: torch.Tensor, plan: _Path) -> torch.Tensor:
        emb = self.stem(x)  # (B, T, E)
        cell = self._cell()
        xw = cell.x_proj(emb)  # (B, T, 2H): every step's input projection in one product
        h = emb.new_zeros(emb.shape[0], cast(RNNSpace, self.space).hidden)
        outputs = []
        for t in range(emb.shape[1]):
            h = cell(xw[:, t], h, plan)
            outputs.append(h)
        assert self._arch is not None
        logits = self.head_of(self._arch)(torch.stack(outputs, dim=1))  # (B, T, V)
        return cast(torch.Tensor, logits.transpose(1, 2))  # (B, V, T)
