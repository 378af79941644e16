"""The supernet: every candidate operation of a space, of which one path runs at a time."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

import torch
from torch import nn

from wpl_nas.ops import ReLUConvBN, batch_norm, conv, create_op
from wpl_nas.spaces import Architecture, SearchSpace, edge_label

__all__ = ["Supernet"]


class ResidualReduction(nn.Module):
    """NAS-Bench-201's residual block between stages: two ReLU-Conv-BN plus a shortcut."""

    def __init__(self, dims: int, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(dims, c_in, c_out, 3, stride)
        self.conv_b = ReLUConvBN(dims, c_out, c_out, 3)
        self.shortcut: nn.Module
        if stride == 2:
            pool = nn.AvgPool1d(2, 2) if dims == 1 else nn.AvgPool2d(2, 2)
            self.shortcut = nn.Sequential(pool, conv(dims, c_in, c_out, 1))
        elif c_in != c_out:
            self.shortcut = ReLUConvBN(dims, c_in, c_out, 1)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.conv_b(self.conv_a(x))


class Cell(nn.Module):
    """One cell position: a module per (edge, candidate op); runs the edges it is given."""

    def __init__(self, space: SearchSpace, channels: int, fixed: Architecture | None) -> None:
        super().__init__()
        self.output_node = space.output_node
        # In a fixed (stand-alone) network only the architecture's live ops exist.
        wanted = (
            {(s, d): {op} for s, d, op in space.active_edges(fixed)}
            if fixed is not None
            else {(s, d): set(ops) for (s, d), ops in zip(space.edges, space.choices.values(), strict=True)}
        )
        self.edges = nn.ModuleDict()
        for (s, d), ops in wanted.items():
            self.edges[edge_label(s, d)] = nn.ModuleDict(
                {op: create_op(op, channels=channels, dims=space.dims) for op in sorted(ops) if op != "none"}
            )

    def forward(self, x: torch.Tensor, active: list[tuple[int, int, str]]) -> torch.Tensor:
        # `active` is in canonical (target-node) order, so every source is final when used.
        nodes: dict[int, torch.Tensor] = {0: x}
        for s, d, op in active:
            src = nodes[s] if s in nodes else torch.zeros_like(x)  # a node with no live input is 0
            ops = cast(nn.ModuleDict, self.edges[edge_label(s, d)])
            out = ops[op](src)
            nodes[d] = nodes[d] + out if d in nodes else out
        return nodes.get(self.output_node, torch.zeros_like(x))


class Supernet(nn.Module):
    """All candidate ops of ``space`` on its skeleton; runs only the chosen path.

    Call order: :meth:`set_arch` (or ``with net.use(arch):``), then ``forward``. A supernet
    with no architecture chosen refuses to run. ``Supernet(space, ..., fixed=arch)`` builds
    the stand-alone network of one architecture: the same module names, holding only that
    path's ops, so ``net.parameters_of(arch)`` keys load straight into it.

    Args:
        space: The search space.
        in_channels: Input channels of the data (1 for MNIST-1D, 3 for CIFAR).
        num_classes: Output classes.
        fixed: Build the stand-alone network of this architecture instead of the supernet.
        heads: Number of output heads; a candidate runs the one its ``arch.head`` names
            (task-incremental scenarios give each task its own head). With one head its
            parameters are ``head.*``; with several, ``heads.<n>.*``.
    """

    def __init__(
        self, space: SearchSpace, *, in_channels: int, num_classes: int, fixed: Architecture | None = None,
        heads: int = 1,
    ) -> None:
        super().__init__()
        if heads < 1:
            raise ValueError(f"heads must be >= 1, but got heads={heads}")
        self.space = space
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.num_heads = heads
        self.fixed = self._check(fixed) if fixed is not None else None
        dims = space.dims
        self.stem = nn.Sequential(conv(dims, in_channels, space.stem_channels, 3),
                                  batch_norm(dims, space.stem_channels))
        self.stages = nn.ModuleList()
        c_prev = space.stem_channels
        for i, stage in enumerate(space.stages):
            blocks: list[nn.Module] = []
            if i > 0 or c_prev != stage.channels:
                blocks.append(ResidualReduction(dims, c_prev, stage.channels, stride=2 if i > 0 else 1))
            blocks += [Cell(space, stage.channels, self.fixed) for _ in range(stage.cells)]
            self.stages.append(nn.Sequential(*blocks))
            c_prev = stage.channels

        def make_head() -> nn.Module:
            pool = nn.AdaptiveAvgPool1d(1) if dims == 1 else nn.AdaptiveAvgPool2d(1)
            return nn.Sequential(batch_norm(dims, c_prev), nn.ReLU(), pool, nn.Flatten(),
                                 nn.Linear(c_prev, num_classes))

        if heads == 1:
            self.head = make_head()
        else:
            self.heads = nn.ModuleList(make_head() for _ in range(heads))
        self._arch: Architecture | None = self.fixed
        self._active: list[tuple[int, int, str]] | None = (
            space.active_edges(self.fixed) if self.fixed is not None else None
        )
        self._path_cache: dict[Architecture, list[str]] = {}

    # --- choosing the path ------------------------------------------------------------
    @property
    def arch(self) -> Architecture | None:
        """The architecture that ``forward`` runs, or None if none is chosen."""
        return self._arch

    def set_arch(self, arch: Architecture | None) -> None:
        """Choose the path that ``forward`` runs (None: no path; forward then refuses)."""
        if self.fixed is not None and arch != self.fixed:
            raise ValueError(f"this network is fixed to {self.fixed}; it cannot run {arch}")
        self._arch = self._check(arch) if arch is not None else None
        self._active = self.space.active_edges(arch) if arch is not None else None

    def _check(self, arch: Architecture) -> Architecture:
        if not 0 <= arch.head < self.num_heads:
            raise ValueError(f"architecture {arch} uses head {arch.head}, but this supernet has "
                             f"{self.num_heads} head(s): 0..{self.num_heads - 1}")
        return self.space.validate(arch)

    @contextmanager
    def use(self, arch: Architecture) -> Iterator[Supernet]:
        """Run ``arch`` inside the block, then restore the previous choice."""
        previous = self._arch
        self.set_arch(arch)
        try:
            yield self
        finally:
            self.set_arch(previous)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._active is None:
            raise RuntimeError("no architecture chosen: call supernet.set_arch(arch) or use "
                               "`with supernet.use(arch):` before running the supernet")
        x = self.stem(x)  # (B, C, L) or (B, C, H, W)
        for stage in self.stages:
            for block in cast(nn.Sequential, stage):
                x = block(x, self._active) if isinstance(block, Cell) else block(x)
        assert self._arch is not None
        head = self.head if self.num_heads == 1 else self.heads[self._arch.head]
        return cast(torch.Tensor, head(x))  # (B, num_classes)

    # --- which weights a candidate uses ---------------------------------------------------
    def parameter_names_of(self, arch: Architecture) -> list[str]:
        """Names of the shared tensors ``arch`` uses: the skeleton (stem, reductions, its
        head) and the ops on its live edges in every cell, in ``named_parameters`` order."""
        if arch not in self._path_cache:
            live = {(edge_label(s, d), op) for s, d, op in self.space.active_edges(self._check(arch))}
            names = []
            for name, _ in self.named_parameters():
                parts = name.split(".")
                if parts[0] == "heads" and int(parts[1]) != arch.head:
                    continue
                if "edges" in parts:
                    i = parts.index("edges")
                    if (parts[i + 1], parts[i + 2]) not in live:
                        continue
                names.append(name)
            self._path_cache[arch] = names
        return self._path_cache[arch]

    def parameters_of(self, arch: Architecture) -> dict[str, nn.Parameter]:
        """``{name: parameter}`` for the tensors ``arch`` uses (see :meth:`parameter_names_of`)."""
        params = dict(self.named_parameters())
        return {name: params[name] for name in self.parameter_names_of(arch)}

    def count_parameters(self, arch: Architecture | None = None) -> int:
        """Number of scalars on ``arch``'s path (all of them if ``arch`` is None)."""
        tensors = self.parameters() if arch is None else self.parameters_of(arch).values()
        return sum(p.numel() for p in tensors)

    def standalone(self, arch: Architecture) -> Supernet:
        """A stand-alone network of ``arch`` holding a copy of this supernet's weights."""
        first = next(self.parameters())
        net = Supernet(self.space, in_channels=self.in_channels, num_classes=self.num_classes,
                       fixed=arch, heads=self.num_heads).to(first.device)
        missing, _ = net.load_state_dict(
            {k: v.detach().clone() for k, v in self.parameters_of(arch).items()}, strict=False)
        if any(not k.startswith("heads.") for k in missing):  # only the other heads may stay unset
            raise RuntimeError(f"stand-alone network of {arch} is missing weights: {missing}")
        return net
