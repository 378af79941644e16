"""The ``mobilenet`` kind: stages of inverted-residual (MBConv) blocks with a kernel size, an
expansion ratio and a depth chosen per stage.

A block expands its input with a 1x1 convolution (left out when the ratio is 1), filters each
channel with a depthwise ``k x k`` convolution, and projects back with a linear 1x1 convolution;
it adds its input when the shape is kept (Sandler et al., CVPR 2018). A stage runs the first
``depth`` of its block positions; its first block changes the stride and the channels. The
choices are those of the ProxylessNAS and Once-for-All spaces (Cai et al., ICLR 2019 and 2020),
made per stage: one architecture picks ``s<i>/kernel``, ``s<i>/expand`` and ``s<i>/depth`` for
every stage ``i``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx

from wpl_nas.spaces._architecture import Architecture
from wpl_nas.spaces._space import SPACE_KINDS, SearchSpace, SpecReader

__all__ = ["MBStageSpec", "MobileNetSpace", "StagePick"]

_TOP_KEYS = {"kind", "name", "description", "citation", "dims", "stem_channels", "stem_stride", "stages",
             "last_channels"}
_STAGE_KEYS = {"channels", "stride", "depth", "kernel", "expand"}


@dataclass(frozen=True)
class MBStageSpec:
    """One stage: up to ``max(depth)`` MBConv blocks producing ``channels`` channels.

    Attributes:
        channels: Output channels of every block of the stage.
        stride: Stride of the stage's first block (1 keeps the resolution, 2 halves it).
        depth: The numbers of blocks the stage may run.
        kernel: The depthwise kernel sizes it may use (odd, so padding keeps the size).
        expand: The expansion ratios it may use (hidden channels = input channels x ratio).
    """

    channels: int
    stride: int
    depth: tuple[int, ...]
    kernel: tuple[int, ...]
    expand: tuple[int, ...]

    @property
    def max_depth(self) -> int:
        return max(self.depth)


@dataclass(frozen=True)
class StagePick:
    """What one architecture runs in one stage."""

    kernel: int
    expand: int
    depth: int

    @property
    def variant(self) -> str:
        """The name of the block variant, e.g. ``k5e6``: the key of its module in ``edges``."""
        return f"k{self.kernel}e{self.expand}"


@SPACE_KINDS.register("mobilenet")
@dataclass(frozen=True, eq=False, kw_only=True)
class MobileNetSpace(SearchSpace):
    """A MobileNetV2-style space: a stem, stages of MBConv blocks, an optional last 1x1 conv, a head.

    Attributes (besides :class:`SearchSpace`'s; ``dims`` is 1 or 2):
        stem_channels: Channels of the stem's 3x3 convolution.
        stem_stride: Its stride (2 on ImageNet, 1 on 32x32 images and on MNIST-1D).
        stages: The stages, in order.
        last_channels: Channels of the final 1x1 convolution (1280 in MobileNetV2); 0 for none.
    """

    kind = "mobilenet"
    stem_channels: int
    stem_stride: int = 1
    stages: tuple[MBStageSpec, ...]
    last_channels: int = 0

    @staticmethod
    def stage_label(index: int) -> str:
        """``s1``, ``s2``, ...: the prefix of stage ``index``'s (0-based) choice labels."""
        return f"s{index + 1}"

    @classmethod
    def unit(cls, stage: int, block: int) -> str:
        """The ``edges`` unit of block position ``block`` of stage ``stage`` (0-based): ``s1b0``."""
        return f"{cls.stage_label(stage)}b{block}"

    @property
    def choices(self) -> dict[str, tuple[str, ...]]:
        out: dict[str, tuple[str, ...]] = {}
        for i, stage in enumerate(self.stages):
            s = self.stage_label(i)
            out[f"{s}/kernel"] = tuple(str(k) for k in stage.kernel)
            out[f"{s}/expand"] = tuple(str(e) for e in stage.expand)
            out[f"{s}/depth"] = tuple(str(d) for d in stage.depth)
        return out

    def picks(self, arch: Architecture) -> list[StagePick]:
        """What ``arch`` runs in each stage."""
        return [StagePick(int(arch[f"{s}/kernel"]), int(arch[f"{s}/expand"]), int(arch[f"{s}/depth"]))
                for s in (self.stage_label(i) for i in range(len(self.stages)))]

    def summary_lines(self) -> list[str]:
        lines = [
            f"  data:          {self.dims}-D",
            f"  stem:          3x3 conv to {self.stem_channels} ch, stride {self.stem_stride}",
            "  blocks:        MBConv: 1x1 expand (none at ratio 1), depthwise kxk, linear 1x1 project; "
            "BN, ReLU6; residual when the shape is kept",
        ]
        for i, st in enumerate(self.stages):
            head = f"stage {self.stage_label(i)}:"
            lines.append(
                f"  {head:<15}{st.channels} ch, stride {st.stride}; "
                f"depth {'|'.join(map(str, st.depth))}, kernel {'|'.join(map(str, st.kernel))}, "
                f"expand {'|'.join(map(str, st.expand))}")
        last = f"1x1 conv to {self.last_channels} ch, " if self.last_channels else ""
        lines.append(f"  head:          {last}global average pool, linear")
        return lines

    def dag(self, arch: Architecture | None = None) -> nx.DiGraph:
        """The chain of block positions from the stem to the head, a node after each stage.

        Block nodes are labelled with their position in the stage, stage nodes ``s1``, ...
        With ``arch``, a stage's first edge is labelled with the variant its blocks use
        (``k5e6``); the blocks a stage skips are faint and an arc jumps from the last block it
        runs to the stage node. Without ``arch``, a stage's first edge lists its kernel sizes
        and ratios, the edges only some depths take are faint, and an arc labelled ``depth d``
        leaves the last block of each shorter depth ``d``.
        """
        graph = nx.DiGraph()
        graph.add_node("stem", label="stem", pos=(0.0, 0.0))
        picks = self.picks(arch) if arch is not None else None
        x, previous = 1.0, "stem"
        for i, st in enumerate(self.stages):
            blocks = [self.unit(i, j) for j in range(st.max_depth)]
            out = self.stage_label(i)
            for j, node in enumerate(blocks):
                graph.add_node(node, label=str(j), pos=(x, 0.0))
                x += 1.0
            graph.add_node(out, label=out, pos=(x, 0.0))
            x += 1.0
            chain = [previous, *blocks, out]
            if picks is not None:
                depth = picks[i].depth
                for j in range(st.max_depth):
                    # The stage's first edge names the variant all its blocks use.
                    graph.add_edge(chain[j], chain[j + 1], label=picks[i].variant if j == 0 else "",
                                   live=j < depth)
                graph.add_edge(blocks[-1], out, label="", live=depth == st.max_depth)
                if depth < st.max_depth:
                    graph.add_edge(blocks[depth - 1], out, label="", live=True)
            else:
                options = f"k{'|'.join(map(str, st.kernel))}\ne{'|'.join(map(str, st.expand))}"
                for j in range(st.max_depth):
                    graph.add_edge(chain[j], chain[j + 1], label=options if j == 0 else "",
                                   live=j < min(st.depth))
                graph.add_edge(blocks[-1], out, label="", live=len(st.depth) == 1)
                for d in st.depth:
                    if d < st.max_depth:
                        graph.add_edge(blocks[d - 1], out, label=f"depth {d}", live=True)
            previous = out
        graph.add_node("head", label="head", pos=(x, 0.0))
        graph.add_edge(previous, "head", label="", live=True)
        return graph

    @classmethod
    def from_spec(cls, data: Mapping[str, Any], read: SpecReader, *, source: Path | None) -> MobileNetSpace:
        top = read.mapping(data, "<top level>", _TOP_KEYS,
                           optional=("description", "citation", "kind", "stem_stride", "last_channels"))
        dims = top["dims"]
        if dims not in (1, 2):
            raise read.fail("dims", f"must be 1 or 2, but got {dims!r}")
        last = top.get("last_channels", 0)  # 0 (or leaving it out) means no final 1x1 convolution
        if isinstance(last, bool) or not isinstance(last, int) or last < 0:
            raise read.fail("last_channels", f"must be a positive integer (or 0 for none), but got {last!r}")
        raw_stages = top["stages"]
        if not isinstance(raw_stages, list) or not raw_stages:
            raise read.fail("stages", f"must be a non-empty list of stage mappings, but got {raw_stages!r}")
        stages = []
        for i, raw in enumerate(raw_stages):
            field = f"stages[{i}]"
            st = read.mapping(raw, field, _STAGE_KEYS, optional=())
            kernels = read.int_choices(st["kernel"], f"{field}.kernel")
            even = [k for k in kernels if k % 2 == 0]
            if even:
                # 'Same' padding (k // 2 on each side) only keeps the size for odd kernels.
                raise read.fail(f"{field}.kernel", f"kernel sizes must be odd, but got {even}; valid choices: "
                                "odd positive integers such as 3, 5, 7")
            stages.append(MBStageSpec(
                channels=read.positive_int(st["channels"], f"{field}.channels"),
                stride=read.positive_int(st["stride"], f"{field}.stride"),
                depth=read.int_choices(st["depth"], f"{field}.depth"),
                kernel=kernels,
                expand=read.int_choices(st["expand"], f"{field}.expand"),
            ))
        return cls(
            **cls.common(top, read),
            dims=dims,
            source=source,
            stem_channels=read.positive_int(top["stem_channels"], "stem_channels"),
            stem_stride=read.positive_int(top.get("stem_stride", 1), "stem_stride"),
            stages=tuple(stages),
            last_channels=last,
        )
