"""A concrete architecture: one operation chosen per edge of the cell DAG."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from wpl_nas.errors import ConfigError

__all__ = ["Architecture", "edge_label"]


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

        Raises:
            ConfigError: ``text`` is not in that format.
        """
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
            return self.edges == other.edges and self.head == other.head
        return NotImplemented
