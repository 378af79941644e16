"""The supernet base class: one path of shared weights runs at a time, whatever the space kind."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from wpl_nas.registry import Registry
from wpl_nas.spaces import Architecture, SearchSpace

__all__ = ["SUPERNETS", "Supernet"]


class Supernet(nn.Module):
    """Every candidate's weights of a space; runs only the chosen path.

    ``Supernet(space, ...)`` builds the supernet class registered in :data:`SUPERNETS` for
    ``space.kind``, so callers need not know the kind. Call order: :meth:`set_arch` (or
    ``with net.use(arch):``), then ``forward``; a supernet with no architecture chosen refuses
    to run. ``Supernet(space, ..., fixed=arch)`` builds the stand-alone network of one
    architecture: the same module names, holding only that path's weights, so
    ``net.parameters_of(arch)`` keys load straight into it (see :meth:`standalone`).

    A subclass calls ``super().__init__`` first, then builds its modules and heads
    (:meth:`make_heads`). It keeps every module that only some candidates use in an
    ``nn.ModuleDict`` attribute named ``edges``, as ``edges[unit][variant]`` (a unit is a
    place where candidates differ, a variant one of its options), and implements
    :meth:`path_units` (which of those a candidate uses) and :meth:`forward_path`. Every other
    parameter is the skeleton, used by every candidate; strategies protect ``edges`` weights
    by default (:meth:`is_searchable`). Parts of the skeleton that a candidate may use only in
    part (an MLP head's columns) go in a dict named ``slices`` the same way: on a candidate's
    path only when :meth:`path_units` names them, and, being skeleton, not protected by default.
    The anatomy (:mod:`wpl_nas.evaluation.anatomy`) reads depth from the module names every kind
    shares: ``stem``, then ``stages`` (each an
    ``nn.Sequential`` whose last block's output is the stage's representation), then the head.

    Args:
        space: The search space.
        in_channels: Input channels of the data (1 for MNIST-1D, 3 for CIFAR).
        num_classes: Output classes (the vocabulary size for language models).
        fixed: Build the stand-alone network of this architecture instead of the supernet.
        heads: Number of output heads; a candidate runs the one its ``arch.head`` names
            (task-incremental scenarios give each task its own head). With one head its
            parameters are ``head.*``; with several, ``heads.<n>.*``.
        input_shape: Shape of one input sample, for kinds that need more than its channels
            (an MLP flattens it); None means ``(in_channels,)``.
    """

    stem: nn.Module
    stages: nn.ModuleList

    def __new__(cls, *args: Any, **kwargs: Any) -> Supernet:
        if cls is Supernet:
            space = args[0] if args else kwargs["space"]
            cls = SUPERNETS.get(space.kind)
        return super().__new__(cls)

    def __init__(self, space: SearchSpace, *, in_channels: int, num_classes: int,
                 fixed: Architecture | None = None, heads: int = 1,
                 input_shape: tuple[int, ...] | None = None) -> None:
        super().__init__()
        if heads < 1:
            raise ValueError(f"heads must be >= 1, but got heads={heads}")
        self.space = space
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.num_heads = heads
        self.input_shape = tuple(input_shape) if input_shape is not None else (in_channels,)
        self.fixed = self._check(fixed) if fixed is not None else None
        self._arch: Architecture | None = None
        self._plan: Any = None
        self._path_cache: dict[Architecture, list[str]] = {}

    def make_heads(self, make_head: Callable[[], nn.Module]) -> None:
        """Create the output head(s) (``head``, or ``heads.<n>``); call at the end of ``__init__``."""
        if self.num_heads == 1:
            self.head = make_head()
        else:
            self.heads = nn.ModuleList(make_head() for _ in range(self.num_heads))
        if self.fixed is not None:
            self.set_arch(self.fixed)

    def head_of(self, arch: Architecture) -> nn.Module:
        """The output head ``arch`` runs."""
        return self.head if self.num_heads == 1 else self.heads[arch.head]

    # --- what a subclass provides --------------------------------------------------------
    def path_units(self, arch: Architecture) -> set[tuple[str, str]]:
        """The ``(unit, variant)`` keys of ``edges`` whose modules ``arch`` runs."""
        raise NotImplementedError

    def plan(self, arch: Architecture) -> Any:
        """Whatever :meth:`forward_path` needs to run ``arch``, worked out once per :meth:`set_arch`."""
        return arch

    def forward_path(self, x: torch.Tensor, plan: Any) -> torch.Tensor:
        """Run the chosen path (its :meth:`plan`) on ``x``, head included."""
        raise NotImplementedError

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
        self._plan = self.plan(self._arch) if self._arch is not None else None

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
        if self._arch is None:
            raise RuntimeError("no architecture chosen: call supernet.set_arch(arch) or use "
                               "`with supernet.use(arch):` before running the supernet")
        return self.forward_path(x, self._plan)

    # --- which weights a candidate uses ---------------------------------------------------
    @staticmethod
    def unit_of(name: str) -> tuple[str, str] | None:
        """``(unit, variant)`` of parameter ``name`` if it lives in an ``edges`` or ``slices``
        dict, else None (a parameter every candidate uses)."""
        parts = name.split(".")
        for i, part in enumerate(parts[:-2]):
            if part in _PATH_DICTS:
                return parts[i + 1], parts[i + 2]
        return None

    @staticmethod
    def is_searchable(name: str) -> bool:
        """Whether parameter ``name`` is a searchable weight (in an ``edges`` dict): one that only
        some candidates use, which strategies protect by default (the rest is skeleton)."""
        return "edges" in name.split(".")

    def parameter_names_of(self, arch: Architecture) -> list[str]:
        """Names of the shared tensors ``arch`` uses: the skeleton, its head, and the modules
        of its :meth:`path_units`, in ``named_parameters`` order."""
        if arch not in self._path_cache:
            live = self.path_units(self._check(arch))
            names = []
            for name, _ in self.named_parameters():
                parts = name.split(".")
                if parts[0] == "heads" and int(parts[1]) != arch.head:
                    continue
                unit = self.unit_of(name)
                if unit is not None and unit not in live:
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

    def path_state(self, arch: Architecture) -> dict[str, torch.Tensor]:
        """The weights a stand-alone network of ``arch`` loads (copies of :meth:`parameters_of`)."""
        return {k: v.detach().clone() for k, v in self.parameters_of(arch).items()}

    def standalone(self, arch: Architecture) -> Supernet:
        """A stand-alone network of ``arch`` holding a copy of this supernet's weights."""
        first = next(self.parameters())
        net = type(self)(self.space, in_channels=self.in_channels, num_classes=self.num_classes,
                         fixed=arch, heads=self.num_heads, input_shape=self.input_shape).to(first.device)
        missing, _ = net.load_state_dict(self.path_state(arch), strict=False)
        if any(not k.startswith("heads.") for k in missing):  # only the other heads may stay unset
            raise RuntimeError(f"stand-alone network of {arch} is missing weights: {missing}")
        return net


#: The dicts whose ``[unit][variant]`` modules only the candidates that name them use.
_PATH_DICTS = ("edges", "slices")
#: Supernet classes by the space kind they build; a new kind registers its network here from its own module.
SUPERNETS: Registry[type[Supernet]] = Registry("supernet for space kind")
