"""``synthetic``: synthetic rehearsal (after Masarczyk & Tautkute, CVPR-W 2020).

Each protected candidate gets a small synthetic input set, learned by meta-gradients (dataset
distillation, Wang et al. 2018; generative teaching networks, Such et al. 2020) so that a few
SGD steps of distillation on it repair the candidate after its shared weights are disturbed.
While later candidates train, the set is replayed with distillation towards the candidate's
stored logits: the candidate's weights need not be kept, only its few inputs and outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch.func import functional_call

from wpl_nas.configs import Options, opt
from wpl_nas.errors import ConfigError
from wpl_nas.spaces import Architecture
from wpl_nas.strategies._replay import Member, ReplayStrategy, distil_on, kd_loss
from wpl_nas.strategies.base import Batches, CandidateContext
from wpl_nas.strategies.registry import STRATEGIES
from wpl_nas.supernet import Supernet

if TYPE_CHECKING:
    from wpl_nas.training.precision import MeasuringScale

__all__ = ["Synthesis", "SyntheticOptions", "SyntheticStrategy"]

#: Real held-out samples per outer step (the outer loss's batch).
REAL_BATCH = 128
#: Held-out batch size and batch limit when gathering the class-balanced initial set.
_INIT_BATCH, _INIT_BATCHES = 256, 64
#: Salt of the interference seed.
_SEED = 0x5EED


@dataclass
class Synthesis:
    """What learning one candidate's synthetic set produced.

    Attributes:
        inputs: The learned synthetic inputs, ``(n_syn, *input_shape)``.
        targets: The candidate's logits on them at its consolidated weights.
        initial: The real held-out samples the inputs started from.
        outer_losses: The outer loss (real cross-entropy after the unrolled repair) at each
            outer step, before that step's update.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    initial: torch.Tensor
    outer_losses: list[float] = field(default_factory=list)


@dataclass
class SyntheticOptions(Options):
    """Synthetic rehearsal (after Masarczyk & Tautkute, CVPR-W 2020): a small learned data set per
    protected candidate, replayed with distillation while later candidates train."""

    resumable = ("lam",)  # its strength may change on resume
    positive = ("temperature", "protect", "per_class", "inner_steps", "outer_steps", "inner_lr", "meta_lr")
    non_negative = ("lam", "noise")

    lam: float = opt(1.0, "Weight λ of the replayed distillation loss.")
    temperature: float = opt(2.0, "Softmax temperature T of the replayed targets.")
    protect: int = opt(5, "Candidates with a synthetic set (best by score at training); memory is "
                          "protect × classes × per-class × input size.")
    per_class: int = opt(4, "Synthetic samples per class.")
    inner_steps: int = opt(3, "Unrolled SGD steps on the synthetic set inside each meta-gradient.")
    outer_steps: int = opt(20, "Meta-gradient steps that learn a candidate's synthetic set (compute per "
                               "candidate ≈ outer × (inner + 1) forward-backward passes).")
    inner_lr: float = opt(0.05, "Learning rate of the unrolled inner steps.")
    meta_lr: float = opt(0.05, "Adam learning rate of the synthetic inputs.")
    noise: float = opt(0.05, "Relative size of the weight perturbation the synthetic set must repair.")


@STRATEGIES.register("synthetic")
class SyntheticStrategy(ReplayStrategy):
    """Synthetic rehearsal: a learned replay set per protected candidate, distilled on later.

    Consolidation (``after_candidate``, if the candidate is admitted to the protected set of the
    best ``protect``): ``n_syn = per_class × num_classes`` inputs start as real held-out samples,
    ``per_class`` per class. Then, ``outer_steps`` times: θ₀ = the candidate's path weights +
    ``noise``·(per-tensor std)·ε, a simulated interference (ε seeded by the trial, so runs
    repeat); ``inner_steps`` unrolled SGD steps θ ← θ − ``inner_lr``·∇θ KD(f_θ(x_syn), targets)
    (``create_graph=True``, through ``torch.func.functional_call``), the targets being the
    candidate's logits on x_syn at its clean weights (recomputed from the current x_syn each
    outer step and differentiated through: replay distils towards exactly these); the outer
    loss, the cross-entropy of f_θT on a real held-out batch (a different one each outer step),
    is back-propagated through the unroll into x_syn only, which an Adam step (``meta_lr``)
    moves. The targets are then recomputed at the clean weights and x_syn and targets stored.

    Replay (``after_backward``): one protected candidate per step, round robin among those
    sharing a tensor with the current path: the live supernet runs its architecture on its
    x_syn and ``λ·T²·KL`` to its stored targets is back-propagated; gradients on its private
    tensors are dropped, so weights off the current path never move. Released candidates'
    sets are dropped (their slot is zeroed and reused).

    Cost, bounded by the options. Compute per consolidated candidate ≈ ``outer_steps ×
    (inner_steps + 1)`` forward-backward passes on ``n_syn`` samples (second order through the
    unroll, each a few times a first-order pass) plus one forward-backward on a real batch of
    ``REAL_BATCH`` = 128 per outer step; measured on one CPU thread on a tiny MNIST-1D space,
    the defaults (20 outer × 3 inner steps, 40 samples) take ≈ 3 s, about two training epochs
    on 3,200 samples. Per training step, one extra forward-backward on ``n_syn`` samples (a step
    cost ≈ 2× a plain one there, where per-op overhead dominates). Memory: ``protect × n_syn ×
    (input size + num_classes)`` floats, plus, during consolidation only, the unrolled graph
    (``inner_steps`` copies of the path's weights and its activations on ``n_syn`` samples).

    Buffers: ``inputs`` ``(protect, n_syn, *input_shape)``, sized from the first consolidated
    candidate's data (empty until then); ``targets`` ``(protect, n_syn, num_classes)``. The
    protected set and which slot holds which candidate are the module's extra state.

    Args:
        supernet: The supernet to protect.
        options: :class:`SyntheticOptions`.
    """

    Options = SyntheticOptions
    penalty_tag = "synthetic/loss"
    options: SyntheticOptions
    inputs: torch.Tensor
    targets: torch.Tensor

    def __init__(self, supernet: Supernet, options: SyntheticOptions | None = None) -> None:
        options = options or SyntheticOptions()
        options.validate()
        if supernet.space.dims == 0:  # inputs are learnt by gradient descent: token ids cannot be
            raise ConfigError(f"strategy 'synthetic' learns continuous inputs, but space {supernet.space.name!r} "
                              "reads token ids; pick another --strategy (wpl, ewc, mas, si, distill, ...)")
        super().__init__(supernet, options, capacity=options.protect)
        first = next(supernet.parameters())
        self.n_syn = options.per_class * supernet.num_classes
        self.register_buffer("inputs", torch.zeros(options.protect, self.n_syn, 0, device=first.device,
                                                   dtype=first.dtype))
        self.register_buffer("targets", torch.zeros(options.protect, self.n_syn, supernet.num_classes,
                                                    device=first.device, dtype=first.dtype))
        self._slots: list[Architecture | None] = [None] * options.protect
        #: The last consolidation's synthesis (for inspection; not saved).
        self.last_synthesis: Synthesis | None = None

    @property
    def active(self) -> bool:
        return self.options.lam > 0

    def slot_of(self, arch: Architecture) -> int | None:
        """Index of ``arch``'s synthetic set in the buffers, or None if it has none."""
        return self._slots.index(arch) if arch in self._slots else None

    # --- replay --------------------------------------------------------------------------------
    def prepare(self, ctx: CandidateContext, arch: Architecture) -> tuple[torch.Tensor, torch.Tensor]:
        slot = self.slot_of(arch)
        assert slot is not None, "every protected candidate has a synthetic set"
        return self.inputs[slot], self.targets[slot]

    def replay(self, ctx: CandidateContext, member: Member) -> torch.Tensor:
        x, targets = member.data
        return distil_on(ctx, member.arch, x, targets, lam=self.options.lam,
                         temperature=self.options.temperature, off_path=member.off_path)

    # --- consolidation -----------------------------------------------------------------------------
    def admit(self, ctx: CandidateContext, held_out: Batches) -> bool:
        slot = self.slot_of(ctx.arch)
        if slot is None:
            slot = self._slots.index(None)  # the protected set just made room
        synthesis = self.synthesize(ctx.supernet, ctx.arch, held_out, seed=ctx.trial_index,
                                    scale=ctx.measuring_scale())
        if synthesis is None:
            return False
        self.last_synthesis = synthesis
        with torch.no_grad():
            shape = synthesis.inputs.shape[1:]
            if self.inputs.shape[2:] != shape:
                if any(a is not None for a in self._slots):
                    raise ValueError(f"synthetic sets of shape {tuple(self.inputs.shape[2:])} are stored, but "
                                     f"{ctx.arch} gives inputs of shape {tuple(shape)}")
                self.inputs = self.inputs.new_zeros(self.options.protect, self.n_syn, *shape)
            self.inputs[slot].copy_(synthesis.inputs)
            self.targets[slot].copy_(synthesis.targets)
        self._slots[slot] = ctx.arch
        return True

    def drop(self, arch: Architecture) -> None:
        slot = self.slot_of(arch)
        if slot is not None:
            self._slots[slot] = None
            with torch.no_grad():
                self.inputs[slot].zero_()
                self.targets[slot].zero_()

    def synthesize(self, supernet: Supernet, arch: Architecture, held_out: Batches, *,
                   seed: int, scale: MeasuringScale | None = None) -> Synthesis | None:
        """Learn ``arch``'s synthetic set (see the class docstring); None without held-out data.

        Args:
            supernet: The supernet, holding the candidate's consolidated weights.
            arch: The candidate.
            held_out: Held-out training batches: the initial inputs and the outer loss's batches.
            seed: Seeds the simulated interference (the trial index), so runs repeat.
            scale: fp16's loss scale (``CandidateContext.measuring_scale``) of the meta-gradient and
                of the unrolled repair's gradients inside it; an outer step whose meta-gradient is not
                finite at any scale is skipped (with a warning) [default: none, fp32 and bf16].
        """
        o = self.options
        initial = self._initial_inputs(held_out, supernet.num_classes)
        if initial is None:
            return None
        # A different real batch each outer step (cycled if the held-out data runs short): the
        # set then generalises to unseen data better than one tuned on a single fixed batch.
        real = list(held_out(REAL_BATCH, o.outer_steps))
        clean = self._clean_weights(supernet, arch)
        gen = torch.Generator().manual_seed(_SEED * 1_000_003 + seed)
        x = initial.clone().requires_grad_(True)
        meta = torch.optim.Adam([x], lr=o.meta_lr)
        losses: list[float] = []
        was_training = supernet.training
        supernet.train()
        with supernet.use(arch), torch.enable_grad():
            for step in range(o.outer_steps):
                theta = self._disturb(clean, gen)  # drawn once per step, whatever the retries below
                grad: torch.Tensor | None
                if scale is None:
                    outer = self._outer_loss(supernet, x, theta, *real[step % len(real)])
                    (grad,) = torch.autograd.grad(outer, [x], allow_unused=True)
                else:
                    outers: list[torch.Tensor] = []

                    def scaled(s: float, theta: dict[str, torch.Tensor] = theta,
                               batch: tuple[torch.Tensor, torch.Tensor] = real[step % len(real)],
                               outers: list[torch.Tensor] = outers) -> tuple[torch.Tensor | None, ...]:
                        outers.append(self._outer_loss(supernet, x, theta, *batch, scale=s))
                        return torch.autograd.grad(outers[-1] * s, [x], allow_unused=True)

                    measured = scale.grads(scaled)
                    if measured is None:  # not finite even unscaled: this step learns nothing
                        continue
                    outer, (grad,) = outers[-1], measured
                losses.append(outer.item())  # one sync per outer step, at consolidation only
                if grad is None:  # the output ignores the input (no live cell path): nothing to learn
                    break
                meta.zero_grad(set_to_none=True)
                x.grad = grad
                meta.step()
            with torch.no_grad():
                learned = x.detach().clone()
                targets = supernet(learned)
        supernet.train(was_training)
        if scale is not None:
            scale.report("a synthetic set's meta-gradient")
        return Synthesis(learned, targets, initial, losses)

    def repair_loss(self, supernet: Supernet, arch: Architecture, x: torch.Tensor,
                    batch: tuple[torch.Tensor, torch.Tensor], *, seed: int = 0, draws: int = 4) -> float:
        """The outer loss of synthetic inputs ``x``, averaged over ``draws`` seeded disturbances, on
        one real batch: compares two sets (initial and learned) at the same perturbations.

        Args:
            supernet: The supernet, holding ``arch``'s consolidated weights.
            arch: The candidate.
            x: Synthetic inputs, ``(n, *input_shape)``.
            batch: A real ``(x, y)`` batch.
            seed: Seeds the disturbances.
            draws: How many disturbances the loss is averaged over.
        """
        clean = self._clean_weights(supernet, arch)
        gen = torch.Generator().manual_seed(seed)
        total = 0.0
        with supernet.use(arch), torch.enable_grad():
            for _ in range(draws):
                total += self._outer_loss(supernet, x.detach(), self._disturb(clean, gen), *batch).item()
        return total / draws

    @staticmethod
    def _clean_weights(supernet: Supernet, arch: Architecture) -> dict[str, torch.Tensor]:
        params = dict(supernet.named_parameters())
        return {n: params[n].detach() for n in supernet.parameter_names_of(arch)}

    def _disturb(self, clean: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, torch.Tensor]:
        """θ₀ = θ + noise·std(θ)·ε per tensor: relative to each tensor's spread, so every layer is
        disturbed alike. ε is drawn on the CPU from ``gen`` so that runs repeat on any device."""
        noise = self.options.noise
        return {n: (t + noise * t.std(unbiased=False) * torch.randn(t.shape, generator=gen).to(t)
                    if t.numel() > 1 else t.clone()).requires_grad_(True)
                for n, t in clean.items()}

    def _outer_loss(self, supernet: Supernet, x: torch.Tensor, theta: dict[str, torch.Tensor],
                    xr: torch.Tensor, yr: torch.Tensor, *, scale: float | None = None) -> torch.Tensor:
        """Cross-entropy on ``(xr, yr)`` after the unrolled repair from ``theta`` on ``x`` (``scale``:
        fp16's loss scale of the repair's gradients)."""
        # The targets follow x (the clean candidate's logits on it, differentiable): replay distils
        # towards exactly these, and ignoring their dependence on x biases the meta-gradient.
        targets = supernet(x)
        theta = self._unroll(supernet, theta, x, targets, scale=scale)
        return F.cross_entropy(functional_call(supernet, theta, (xr,)), yr)

    def _unroll(self, supernet: Supernet, theta: dict[str, torch.Tensor], x: torch.Tensor,
                targets: torch.Tensor, *, scale: float | None = None) -> dict[str, torch.Tensor]:
        """``inner_steps`` differentiable SGD steps of distillation on ``x`` from ``theta``. With
        ``scale`` (fp16) the distillation loss is scaled and its gradients divided by it (in float32,
        differentiably), so that they do not flush to zero; a non-finite one makes the outer loss
        non-finite, which the caller's :class:`~wpl_nas.training.precision.MeasuringScale` catches."""
        o = self.options
        for _ in range(o.inner_steps):
            loss = kd_loss(functional_call(supernet, theta, (x,)), targets, o.temperature)
            if scale is not None:
                scaled = torch.autograd.grad(loss * scale, list(theta.values()), create_graph=True, allow_unused=True)
                grads = tuple(None if g is None else g / scale for g in scaled)
            else:
                grads = torch.autograd.grad(loss, list(theta.values()), create_graph=True, allow_unused=True)
            # A tensor without a gradient (an op fed only by a dead node) stays where it is.
            theta = {n: t if g is None else t - o.inner_lr * g for (n, t), g in zip(theta.items(), grads, strict=True)}
        return theta

    def _initial_inputs(self, held_out: Batches, num_classes: int) -> torch.Tensor | None:
        """``per_class`` held-out samples of each class, class by class (None without data).

        A class the held-out data lacks is filled with samples of the others, so the set keeps
        its fixed size.
        """
        k = self.options.per_class
        picked: list[list[torch.Tensor]] = [[] for _ in range(num_classes)]
        have = [0] * num_classes
        spare: list[torch.Tensor] = []
        for xb, yb in held_out(_INIT_BATCH, _INIT_BATCHES):
            for c in range(num_classes):
                if have[c] < k:
                    chosen = xb[yb == c][: k - have[c]]
                    picked[c].append(chosen)
                    have[c] += len(chosen)
            if len(spare) < 1:
                spare.append(xb)
            if min(have) >= k:
                break
        if not spare:
            return None
        fill = torch.cat(spare)
        rows = []
        for c in range(num_classes):
            got = torch.cat(picked[c]) if picked[c] else fill[:0]
            if len(got) < k:
                extra = fill[torch.arange(k - len(got), device=fill.device) % len(fill)]
                got = torch.cat([got, extra])
            rows.append(got)
        return torch.cat(rows).detach().clone()

    # --- state -------------------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {"slots": [None if a is None else str(a) for a in self._slots]}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        slots = state["slots"]
        if len(slots) != self.options.protect:
            raise ValueError(f"the saved state has {len(slots)} synthetic sets, but this strategy keeps "
                             f"protect={self.options.protect}")
        self._slots = [None if s is None else Architecture.parse(s) for s in slots]

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # ``inputs`` is sized by the first consolidated candidate's data: take the saved shape.
        saved = state_dict.get(prefix + "inputs")
        if isinstance(saved, torch.Tensor) and saved.shape != self.inputs.shape:
            self.inputs = self.inputs.new_zeros(saved.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
