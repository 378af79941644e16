"""The process world of a data-parallel search: ``torchrun --nproc-per-node N -m wpl_nas search ...``.

torchrun starts one process per device and tells each its place in the environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``); :meth:`World.from_env` reads it, and without it (or with
``WORLD_SIZE=1``) the world is a single process in which every helper here does nothing, so a plain
``wpl-nas search`` runs exactly the code it ran before. :func:`join` starts the process group: NCCL
on CUDA (each process on ``cuda:LOCAL_RANK``), gloo on the CPU; :func:`leave` ends it.

How long a process waits for the others (:data:`TIMEOUT_ENV`, default :data:`DEFAULT_TIMEOUT`): the
ranks other than 0 wait in a broadcast while rank 0 does alone what lies between two trials (the
pool's re-scores, the study's callbacks and figures, the checkpoint, the sampler) and, at the
start, opens the study and loads the data first. torch's default limit for a collective, 30 min
with gloo and 10 min with NCCL, would end a healthy search whose rank 0 takes longer than that; a
process that dies ends the group through torchrun anyway, so the limit only catches a process that
hangs alive, and a long one costs little. It is an environment variable, as torch's and NCCL's own
settings of a launch are (``OMP_NUM_THREADS``, ``NCCL_*``): it belongs to the launch, not to the
search (it is not recorded in the run's config, and may differ on resume); every process reads its
own, so on several nodes each node's launch sets it. The final selection (every candidate
re-scored) is rank 0's alone: the others are released before it, so no one waits for it.

How a candidate trains data-parallel (:class:`~wpl_nas.training.CandidateTrainer`):

- Every rank draws the same seeded order of *global* batches (the trainer's per-candidate
  generator) and trains on its own contiguous slice of each (:meth:`World.bounds`; the last batch
  may split unevenly, a rank may even get no sample). Its loss is the *sum* of its slice's losses
  divided by the global batch size, and the gradients are summed over ranks, so they equal the
  mean over the global batch that a single process takes.
- The gradients are summed by :meth:`World.all_reduce_gradients`: the path's gradients and those of
  any strategy tensor outside the optimiser (HAT's gate embedding:
  :meth:`~wpl_nas.strategies.Strategy.trainable_tensors`), flattened into one buffer, one
  ``all_reduce`` per step. It runs right after ``backward`` and before the fp16 scaler's unscale,
  the strategy's gradient edits and clipping, which so see the global gradient (and every rank
  takes the same overflow decision).
- Batch norm normalises with batch statistics (:mod:`wpl_nas.ops`); while a data-parallel training
  step runs (:meth:`World.global_batch_norm`) it uses the statistics of the *global* batch
  (:class:`BatchNorm1d`, :class:`BatchNorm2d`: per-channel sums and counts, then sums of squared
  deviations, all-reduced by a differentiable sum over the ranks). Outside
  such a step they are ``nn.BatchNorm1d/2d`` exactly. ``torch.nn.SyncBatchNorm`` does the same
  reduction but refuses CPU tensors (torch 2.14: "expected input tensor to be on GPU or XPU or ..."),
  so gloo could not test it, and it would be active in every forward pass in training mode.

Why not ``DistributedDataParallel``: the sequential trainer relies on weights off the current path
having no gradient at all (``grad is None``), so that SGD leaves them *and their momentum*
untouched. Checked with torch 2.14 and gloo (2 processes): DDP with ``find_unused_parameters=True`` does keep
``grad is None`` for parameters that no rank used (only a parameter used on another rank gets the
reduced gradient), so it would not break that rule. It costs more for what it gives here: after
every forward it walks the autograd graph to find the unused parameters and all-reduces a bitmap
of them, then all-reduces every bucket, i.e. the bytes of the *whole* supernet (every candidate
operation of every edge) where only the path has gradients; its buckets are ordered for the graph
of the first iterations while the path changes every candidate; it leaves out tensors that are
not module parameters (HAT's gate embedding) and does not touch batch norm statistics; and the
training forward would go through a wrapper while scoring and consolidation use the bare supernet.
One flattened all-reduce of the path's gradients (plus the strategy's own tensors) sends only
what changed, with none of that machinery.

How scores are divided: the score of the candidate in training, after every epoch (the last one
is the trial's value), is taken by every rank together on its contiguous share of the fixed
evaluation batches (:meth:`World.batch_starts`: the batches of one process, since batch norm
normalises with each batch's statistics), the partial results summed in one all-reduce: an
integer count of correct predictions (so the accuracy is exactly one process's), or float64 sums
of token losses (perplexity: equal up to the order of the float64 additions). That collective is
only safe where every rank is at the same point with the same candidate, so only the training loop
asks for it (:meth:`~wpl_nas.training.CandidateTrainer.score` with ``world=``); every other score
is one process's whole. The retained pool's re-scores after each trial are divided by candidates
instead (:meth:`World.divide`): rank 0 names the members, each rank scores its share of them on
the full evaluation set alone, and the scores are summed over the ranks; a score depends only on
the architecture and the shared weights, so each is exactly the one a rank alone would take.

What is not split: consolidation (Fisher, MAS, WPL, ...) runs on every rank on the full data. Its
inputs are identical, so every rank computes the same state without any reduction; SI accumulates
from the (summed) gradients and the weights, so it is identical too
(``benchmarks/bench_distributed.py`` measures its share). The final selection (every candidate
re-scored) is rank 0's alone: once the last trial's re-scores are summed, every rank ends the
process group together (:func:`leave` with the world: a barrier, then each destroys its own), the
others exit, and rank 0 selects with no connection left open to a process that has gone. Nothing
in training uses the global RNG (every draw has its own seeded generator), so the ranks need no RNG
exchange.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from wpl_nas.errors import ConfigError

__all__ = ["DEFAULT_TIMEOUT", "TIMEOUT_ENV", "BatchNorm1d", "BatchNorm2d", "World", "join", "leave", "state_checksum"]

#: The environment variable that sets, in seconds, how long a process of a torchrun search waits in
#: a collective (a broadcast, an all-reduce) for the others before it fails.
TIMEOUT_ENV = "WPL_NAS_DIST_TIMEOUT"
#: Its default, in seconds: 2 hours (torch's own is 30 min with gloo, 10 min with NCCL).
DEFAULT_TIMEOUT = 7200.0

T = TypeVar("T")

#: The world of the training step in progress, while it runs (:meth:`World.global_batch_norm`).
_STEP_WORLD: World | None = None


@dataclass(frozen=True)
class World:
    """Where this process stands among those of one search.

    Attributes:
        rank: This process's rank (0 owns the study and writes every file).
        size: The number of processes.
        local_rank: Its rank on this machine (its CUDA device).
        timeout: How long, in seconds, a collective waits for the other processes before it fails
            (:data:`TIMEOUT_ENV`).
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    timeout: float = DEFAULT_TIMEOUT

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> World:
        """The world torchrun describes in ``environ`` [default: ``os.environ``]; a single process
        when ``WORLD_SIZE`` is absent. The collective timeout is :data:`TIMEOUT_ENV`'s, when set.

        Raises:
            ConfigError: ``RANK``, ``WORLD_SIZE`` or ``LOCAL_RANK`` is not a valid integer, or
                :data:`TIMEOUT_ENV` is not a finite number of seconds >= 1 (checked in a single
                process too: a mistake shows before the search goes to a cluster).
        """
        env = os.environ if environ is None else environ
        values = {}
        for name, default in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
            text = env.get(name, default)
            try:
                values[name] = int(text)
            except ValueError:
                message = f"environment variable {name}={text!r} is not an integer (torchrun sets it)"
                raise ConfigError(message) from None
        rank, size, local = values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"]
        if size < 1 or not 0 <= rank < size or local < 0:
            raise ConfigError(f"torchrun's environment is inconsistent: RANK={rank}, WORLD_SIZE={size}, "
                              f"LOCAL_RANK={local} (need 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0)")
        return cls(rank=rank, size=size, local_rank=local, timeout=_timeout(env.get(TIMEOUT_ENV)))

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.size > 1

    @property
    def leader(self) -> bool:
        """Rank 0: owns the study and the run folder."""
        return self.rank == 0

    def share(self, obj: Any = None) -> Any:
        """Rank 0's ``obj`` on every rank (the others pass anything); ``obj`` itself in a single process.

        For small messages (pickled): an architecture, a decision, a state at start-up.
        """
        if not self.distributed:
            return obj
        box = [obj if self.leader else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def bounds(self, n: int) -> tuple[int, int]:
        """This rank's contiguous slice ``[start, stop)`` of a global batch of ``n`` samples: the
        slices of all ranks cover it in rank order, their sizes differ by at most one."""
        return n * self.rank // self.size, n * (self.rank + 1) // self.size

    def batch_starts(self, n: int, *, batch_size: int) -> range:
        """Where this rank's batches of a fixed pass over ``n`` samples start: of the batches of
        ``batch_size`` that one process takes (``range(0, n, batch_size)``, the last perhaps short),
        this rank's contiguous share (:meth:`bounds` over the batches, so a rank may get none). The
        batch boundaries stay those of one process: batch norm normalises with batch statistics, so
        a sample's output depends on the batch it is in. All of them in a single process.
        """
        if not self.distributed:
            return range(0, n, batch_size)
        first, stop = self.bounds(-(-n // batch_size))
        return range(first * batch_size, min(stop * batch_size, n), batch_size)

    def divide(self, items: Sequence[T], score: Callable[[T], float]) -> list[float]:
        """``[score(item) for item in items]``, each item scored by one rank only (its contiguous share,
        :meth:`bounds`), the scores then summed over the ranks so that every rank holds them all.

        Exact when ``score`` depends on the item and on state every rank holds alike (a candidate's
        score with the shared weights): each value is one rank's float, added to zeros. Every rank
        must pass the same ``items``.
        """
        if not self.distributed:
            return [score(item) for item in items]
        start, stop = self.bounds(len(items))
        scores = torch.zeros(len(items), dtype=torch.float64)
        scores[start:stop] = torch.tensor([score(item) for item in items[start:stop]], dtype=torch.float64)
        if dist.get_backend() == "nccl":  # NCCL reduces CUDA tensors only
            scores = scores.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(scores)
        return scores.tolist()

    def all_reduce_gradients(self, tensors: Iterable[torch.Tensor]) -> None:
        """Sum the gradients of ``tensors`` over the ranks, in place, in one all-reduce; tensors
        without a gradient keep none (every rank has the same path, so the same ones have one)."""
        grads = [t.grad for t in tensors if t.grad is not None]
        if not self.distributed or not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def all_reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks, in place (unchanged in a single process)."""
        if self.distributed:
            dist.all_reduce(tensor)
        return tensor

    @contextlib.contextmanager
    def global_batch_norm(self) -> Iterator[None]:
        """Within: batch norm layers in training mode normalise with the global batch's statistics
        (a data-parallel training step's forward pass). Nothing changes in a single process."""
        global _STEP_WORLD
        if not self.distributed:
            yield
            return
        previous, _STEP_WORLD = _STEP_WORLD, self
        try:
            yield
        finally:
            _STEP_WORLD = previous


def _timeout(text: str | None) -> float:
    """The collective timeout :data:`TIMEOUT_ENV` gives (``text``), in seconds; the default when unset."""
    if text is None:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(text)
        datetime.timedelta(seconds=seconds)  # torch takes a timedelta: beyond its range is refused too
    except (ValueError, OverflowError):
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 1):
        raise ConfigError(f"environment variable {TIMEOUT_ENV}={text!r} is not a valid timeout: give a finite number "
                          f"of seconds >= 1 (how long a process of a torchrun search waits for the others; default "
                          f"{DEFAULT_TIMEOUT:g})")
    return seconds


def join(world: World, device: torch.device) -> None:
    """Start the process group of ``world`` (torchrun's ``env://`` rendezvous): NCCL when ``device``
    is CUDA, whose process then uses ``cuda:LOCAL_RANK`` as its current device; gloo otherwise.
    Its collectives (and the rendezvous store) wait up to ``world.timeout`` seconds. Nothing in a
    single process.

    Raises:
        ConfigError: a CUDA device with an index (``cuda:1``: every process would use it), or more
            processes on this machine than it has GPUs.
    """
    if not world.distributed or dist.is_initialized():
        return
    if device.type == "cuda":
        if device.index is not None:
            raise ConfigError(f"device {str(device)!r} names one GPU for every process; under torchrun use --device "
                              "cuda or auto: process LOCAL_RANK=i then uses cuda:i")
        if world.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"process LOCAL_RANK={world.local_rank} has no GPU of its own: this machine has "
                              f"{torch.cuda.device_count()}; start at most that many processes per node "
                              "(--nproc-per-node), or search on the CPU with --device cpu")
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=world.rank, world_size=world.size,
                            timeout=datetime.timedelta(seconds=world.timeout))


def leave(world: World | None = None) -> None:
    """End the process group, if one was started.

    Args:
        world: Given at a point every rank of ``world`` reaches alike (the clean end of a search's
            collectives): the ranks first wait for each other (a barrier), so that none closes its
            connections while a message to or from another may still be on its way, and all end
            the group together. Without it (an error, an interrupt: the others may be anywhere),
            this process ends its own part at once.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if world is not None and world.distributed:
        dist.barrier()
    dist.destroy_process_group()


def state_checksum(*modules: nn.Module) -> float:
    """A cheap fingerprint of the floating-point state of ``modules`` (the float64 sum of every
    tensor of their state dicts): ranks that hold different supernets or strategy states disagree."""
    total = 0.0
    for module in modules:
        for value in module.state_dict().values():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                total += float(value.detach().double().sum())
    return total


class _SumOverRanks(torch.autograd.Function):
    """A differentiable sum over the ranks: the gradient of each rank's input is the sum of the
    ranks' output gradients (every rank's loss depends on every rank's input through the sum).
    ``torch.distributed.nn.functional.all_reduce`` does the same but is deprecated in torch 2.x."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


class _GlobalStatistics:
    """Batch norm that, inside :meth:`World.global_batch_norm` and in training mode, normalises with the
    mean and biased variance of the global batch; ``nn.BatchNorm1d/2d`` exactly otherwise.

    The variance is taken in two passes (the global mean first, then the mean squared deviation
    from it), as a single process computes it, rather than from sums of squares: those cancel
    digits when the mean is large against the spread, and the difference grows over a search.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _STEP_WORLD is None or not self.training:  # type: ignore[attr-defined]
            return super().forward(x)  # type: ignore[misc]
        # (B, C, *spatial): statistics over every axis but the channels'.
        axes, c = [0, *range(2, x.dim())], x.shape[1]
        shape = [1, c] + [1] * (x.dim() - 2)
        xf = x.float()
        count = torch.full((1,), float(x.numel() // c), dtype=torch.float32, device=x.device)
        sums = _SumOverRanks.apply(torch.cat([xf.sum(axes), count]))
        n = sums[c].clamp(min=1.0)
        centred = xf - (sums[:c] / n).view(shape)
        var = _SumOverRanks.apply(centred.square().sum(axes)) / n
        y = centred * torch.rsqrt(var.view(shape) + self.eps)  # type: ignore[attr-defined]
        if self.affine:  # type: ignore[attr-defined]
            y = y * self.weight.view(shape) + self.bias.view(shape)  # type: ignore[attr-defined]
        return y.to(x.dtype)


class BatchNorm1d(_GlobalStatistics, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` (same parameters and state-dict keys) that uses the global batch's
    statistics during a data-parallel training step."""


class BatchNorm2d(_GlobalStatistics, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (same parameters and state-dict keys) that uses the global batch's
    statistics during a data-parallel training step."""
