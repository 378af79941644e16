"""A concrete architecture: one operation chosen per edge of the cell DAG."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from wpl_nas.errors import ConfigError

__all__ = ["Architecture", "Genotype", "edge_label"]


def edge_label(src: int, dst: int) -> str:
    """The stable name of edge ``src -> dst``: the Optuna parameter name of its choice."""
    return f"{src}->{dst}"


@dataclass(frozen=True)
class Architecture(Mapping[str, str]):
    """One operation per cell edge, hashable and ordered canonically (by target, then source).

    It reads as a mapping from edge labels (``"0->1"``) to operation names, and prints in the
    NAS-Bench-201 string format, which lists the inputs of each node in turn::

        |nor_conv_3x3~0|+|skip_connect~0|none~1|+|avg_pool_3x3~0|nor_conv_1x1~1|skip_connect~2|

    A supernet built with several output heads (task-incremental scenarios of the forgetting
    lab) also needs to know which head a candidate uses: ``head`` is part of the candidate's
    identity, printed as an ``@head<N>`` suffix when it is not 0.

    Attributes:
        edges: ``(src, dst, op)`` triples sorted by ``(dst, src)``.
        head: The output head the candidate uses (0 unless the supernet has several).
    """

    edges: tuple[tuple[int, int, str], ...]
    head: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "edges", tuple(sorted(self.edges, key=lambda e: (e[1], e[0]))))

    @classmethod
    def from_ops(cls, ops: Mapping[tuple[int, int], str], *, head: int = 0) -> Architecture:
        """Build from ``{(src, dst): op}``."""
        return cls(tuple((src, dst, op) for (src, dst), op in ops.items()), head)

    def with_head(self, head: int) -> Architecture:
        """The same path on output head ``head``."""
        return Architecture(self.edges, head)

    @classmethod
    def parse(cls, text: str) -> Architecture:
        """Parse the NAS-Bench-201 string format; the inverse of ``str(arch)``.

        Node groups are separated by ``+``; the j-th group lists the inputs of node j + 1
        as ``op~src``. Use :meth:`SearchSpace.parse` to also check the ops against a space.
        A string in the ``label=value;...`` format of other kinds of space gives a
        :class:`Genotype`, so any saved architecture string parses back here.

        Raises:
            ConfigError: ``text`` is not in that format.
        """
        if "=" in text:
            return Genotype.parse(text)
        text, _, head = text.strip().partition("@head")
        if head and not head.isdigit():
            raise ConfigError(f"architecture string suffix '@head{head}' must be '@head<N>' with N a number")
        groups = text.split("+")
        edges = []
        for dst, group in enumerate(groups, start=1):
            if not (group.startswith("|") and group.endswith("|") and len(group) > 2):
                raise ConfigError(
                    f"architecture string {text!r}: node group {group!r} must look like |op~src|op~src|"
                )
            for token in group[1:-1].split("|"):
                op, sep, src = token.rpartition("~")
                if not sep or not op or not src.isdigit():
                    raise ConfigError(
                        f"architecture string {text!r}: entry {token!r} must look like op~src"
                    )
                edges.append((int(src), dst, op))
        return cls(tuple(edges), int(head or 0))

    def op(self, src: int, dst: int) -> str:
        """The operation on edge ``src -> dst``."""
        return self[edge_label(src, dst)]

    def __str__(self) -> str:
        groups: dict[int, list[str]] = {}
        for src, dst, op in self.edges:
            groups.setdefault(dst, []).append(f"{op}~{src}")
        text = "+".join("|" + "|".join(tokens) + "|" for tokens in groups.values())
        return f"{text}@head{self.head}" if self.head else text

    # Mapping interface: edge label -> op name.
    def __getitem__(self, label: str) -> str:
        for src, dst, op in self.edges:
            if edge_label(src, dst) == label:
                return op
        raise KeyError(label)

    def __iter__(self) -> Iterator[str]:
        return (edge_label(src, dst) for src, dst, _ in self.edges)

    def __len__(self) -> int:
        return len(self.edges)

    def __hash__(self) -> int:
        return hash((self.edges, self.head))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Architecture):
            return type(self) is type(other) and self.edges == other.edges and self.head == other.head
        return NotImplemented


@dataclass(frozen=True, eq=False)
class Genotype(Architecture):
    """The architecture of a space that is not a single cell DAG: one value per named choice.

    It reads as a mapping from choice labels to values, in the space's order, and prints as
    ``label=value;label=value`` (plus ``@head<N>`` as for cells)::

        s1/kernel=5;s1/expand=6;s1/depth=3;s2/kernel=3;s2/expand=4;s2/depth=2

    Build one with :meth:`SearchSpace.make` (or :meth:`of`); ``edges`` is empty.

    Attributes:
        picks: ``(label, value)`` pairs in the space's choice order.
    """

    picks: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:  # the space's order is canonical: nothing to sort
        pass

    @classmethod
    def of(cls, values: Mapping[str, str], *, head: int = 0) -> Genotype:
        """Build from ``{label: value}`` (kept in the mapping's order)."""
        return cls((), head, tuple((str(k), str(v)) for k, v in values.items()))

    def with_head(self, head: int) -> Genotype:
        return Genotype((), head, self.picks)

    @classmethod
    def parse(cls, text: str) -> Genotype:
        """Parse ``label=value;...[@head<N>]``; the inverse of ``str(genotype)``.

        Raises:
            ConfigError: ``text`` is not in that format, or names a choice twice.
        """
        body, _, head = text.strip().partition("@head")
        if head and not head.isdigit():
            raise ConfigError(f"architecture string suffix '@head{head}' must be '@head<N>' with N a number")
        pairs = []
        for token in body.split(";"):
            label, sep, value = token.partition("=")
            if not sep or not label.strip() or not value.strip():
                raise ConfigError(f"architecture string {text!r}: entry {token!r} must look like label=value "
                                  "(entries separated by ';')")
            pairs.append((label.strip(), value.strip()))
        labels = [label for label, _ in pairs]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"architecture string {text!r} gives a choice more than once")
        return cls((), int(head or 0), tuple(pairs))

    def __str__(self) -> str:
        text = ";".join(f"{label}={value}" for label, value in self.picks)
        return f"{text}@head{self.head}" if self.head else text

    def __getitem__(self, label: str) -> str:
        for key, value in self.picks:
            if key == label:
                return value
        raise KeyError(label)

    def __iter__(self) -> Iterator[str]:
        return (label for label, _ in self.picks)

    def __len__(self) -> int:
        return len(self.picks)

    def __hash__(self) -> int:
        return hash((self.picks, self.head))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Genotype):
            return self.picks == other.picks and self.head == other.head
        return NotImplemented
