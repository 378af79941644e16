"""Options of every consolidation strategy, with defaults taken from each method's paper.

Each dataclass is one section of the search config: ``--ewc-lam 100`` on the command line is
``ewc: {lam: 100}`` in YAML. This module imports nothing heavy, so configs are read and checked
without loading PyTorch.

Quadratic-penalty strategies (wpl, ewc, online-ewc, si, mas, anpyc) all add
``strength/2 · Σ Ω_i (θ_i − θ*_i)²`` on the shared weights of the current path. Papers that
write the penalty without the ½ (SI, MAS, ANPyC) keep their own constant here, and the strategy
doubles it, so each paper's published value means what it meant there.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from wpl_nas.errors import ConfigError

__all__ = [
    "STRATEGY_SECTIONS",
    "ANPyCOptions",
    "DistillOptions",
    "EWCOptions",
    "HATOptions",
    "MASOptions",
    "OnlineEWCOptions",
    "SIOptions",
    "SyntheticOptions",
    "WPLOptions",
    "opt",
    "require_finite",
]


def opt(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with a default and its help text (shown by ``--help``)."""
    return field(default=default, metadata={"help": help, **kw})


def require_finite(obj: Any, prefix: str = "") -> None:
    """Every float field of dataclass ``obj`` is finite (range checks let NaN through: nan <= 0 is False).

    Raises:
        ConfigError: naming the first field that is NaN or infinite.
    """
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{prefix}{f.name} must be a finite number, but got {f.name}={value!r}")


class _Options:
    """Validation shared by the option sections: ranges by name, then the ``choices`` metadata."""

    #: Section name in configs and the CLI flag prefix (``online_ewc`` -> ``--online-ewc-gamma``).
    section: ClassVar[str] = ""
    positive: ClassVar[tuple[str, ...]] = ()
    non_negative: ClassVar[tuple[str, ...]] = ()
    unit: ClassVar[tuple[str, ...]] = ()  # in [0, 1]

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the section, key and value of the first bad option."""
        require_finite(self, prefix=f"{self.section}.")
        for name in self.positive:
            self._require(name, getattr(self, name) > 0, "> 0")
        for name in self.non_negative:
            self._require(name, getattr(self, name) >= 0, ">= 0")
        for name in self.unit:
            self._require(name, 0 <= getattr(self, name) <= 1, "in [0, 1]")
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise ConfigError(f"unknown {self.section}.{f.name} {value!r}; valid choices: {', '.join(choices)}")

    def _require(self, name: str, ok: bool, what: str) -> None:
        if not ok:
            raise ConfigError(f"{self.section}.{name} must be {what}, but got {name}={getattr(self, name)!r}")


_FORM = ("How the pull is applied: 'proximal' (implicit step θ←(θ+ηαΩθ*)/(1+ηαΩ) after the optimiser step; "
         "stable for any strength) or 'gradient' (closed-form gradient αΩ(θ−θ*) added before the step; "
         "diverges once lr·α·max Ω exceeds ~2).")
_GLOBAL = ("Also protect the skeleton's weights (stem, reductions, head) that every candidate shares; "
           "off, only the cell ops are protected.")
_PER_SAMPLE = ("Importance from per-sample gradients (torch.func.vmap; each sample is its own batch for "
               "batch norm) rather than from batch gradients (B·mean of squared batch gradients).")


@dataclass
class WPLOptions(_Options):
    """Weight plasticity loss (Benyahia et al., ICML 2019). Defaults: see each field."""

    section: ClassVar[str] = "wpl"
    positive = ("fisher_batches", "fisher_batch_size", "normalize_norm")
    non_negative = ("alpha", "alpha_decay", "start_trial", "alpha_decay_after", "protect")
    unit = ("decay",)

    # 100, not the 1000 that the two-model experiment prefers: ranked against stand-alone truth, whole
    # searches rank and choose better at 100 (benchmarks/README.md, bench_fidelity.py; issue 13).
    alpha: float = opt(
        100.0, "Strength α of the pull α/2·Σ Ω(θ−θ*)² on shared weights; kept apart from Ω (never folded in).")
    form: str = opt("proximal", _FORM, choices=("proximal", "gradient"))
    fisher_batches: int = opt(8, "Held-out batches used to estimate a candidate's diagonal Fisher.")
    fisher_batch_size: int = opt(32, "Batch size for the Fisher estimate.")
    per_sample: bool = opt(False, _PER_SAMPLE + " Off: the reference code's batch estimate.")
    accumulate: str = opt(
        "sum", "How Ω combines candidates: 'sum' (Ω+=F), 'decay' (Ω←γΩ+F) or 'max' (Ω←max(Ω,F)).",
        choices=("sum", "decay", "max"))
    decay: float = opt(0.9, "γ for accumulate=decay.")
    normalize: bool = opt(
        False, "Rescale each tensor's Fisher to Frobenius norm --wpl-normalize-norm before accumulating "
        "(what the reference code's clip ends up doing).")
    normalize_norm: float = opt(10.0, "Per-tensor Fisher norm when --wpl-normalize is on (reference code: 10).")
    start_trial: int = opt(0, "First trial whose candidate is consolidated (earlier ones warm the supernet up).")
    alpha_decay: float = opt(0.0, "Linear decay of α per trial after --wpl-alpha-decay-after (0: constant α).")
    alpha_decay_after: int = opt(0, "Trial after which α starts to decay.")
    include_global: bool = opt(True, _GLOBAL + " The reference code protects only the cell ops.")
    protect: int = opt(
        0, "Protect only the best K candidates by score at training (the paper's 'preserve the best models'); "
        "Ω and θ* are rebuilt from their own Fisher and anchors whenever the set changes, so a candidate that "
        "leaves it stops pulling (memory: 2K copies of the weights). 0: every candidate, folded by --wpl-accumulate.")


@dataclass
class EWCOptions(_Options):
    """Elastic weight consolidation (Kirkpatrick et al., PNAS 2017), one penalty per earlier candidate.

    The sum of the per-candidate penalties Σ_k λ/2·F_k(θ−θ*_k)² equals one quadratic with
    Ω = Σ F_k and the Fisher-weighted mean anchor θ* = Σ F_kθ*_k / Σ F_k (plus a constant), so
    the exact multi-penalty EWC is kept in O(parameters) memory however many candidates.
    """

    section: ClassVar[str] = "ewc"
    positive = ("fisher_batches", "fisher_batch_size")
    non_negative = ("lam",)

    lam: float = opt(5000.0, "Strength λ of λ/2·Σ F(θ−θ*)² (the HAT repository's tuned EWC value).")
    form: str = opt("proximal", _FORM, choices=("proximal", "gradient"))
    fisher_batches: int = opt(8, "Held-out batches used to estimate a candidate's diagonal Fisher.")
    fisher_batch_size: int = opt(32, "Batch size for the Fisher estimate.")
    per_sample: bool = opt(True, _PER_SAMPLE)
    include_global: bool = opt(True, _GLOBAL)


@dataclass
class OnlineEWCOptions(_Options):
    """Online EWC (Schwarz et al., "Progress & Compress", ICML 2018): F̃ ← γF̃ + F, one anchor."""

    section: ClassVar[str] = "online_ewc"
    positive = ("fisher_batches", "fisher_batch_size")
    non_negative = ("lam",)
    unit = ("gamma",)

    lam: float = opt(5000.0, "Strength λ of λ/2·Σ F̃(θ−θ*)².")
    gamma: float = opt(0.9, "Decay γ of the running Fisher F̃ ← γF̃ + F (the paper uses γ close to 1).")
    form: str = opt("proximal", _FORM, choices=("proximal", "gradient"))
    fisher_batches: int = opt(8, "Held-out batches used to estimate a candidate's diagonal Fisher.")
    fisher_batch_size: int = opt(32, "Batch size for the Fisher estimate.")
    per_sample: bool = opt(True, _PER_SAMPLE)
    include_global: bool = opt(True, _GLOBAL)


@dataclass
class SIOptions(_Options):
    """Synaptic intelligence (Zenke, Poole, Ganguli, ICML 2017): path-integral importance."""

    section: ClassVar[str] = "si"
    positive = ("xi",)
    non_negative = ("c",)

    c: float = opt(0.1, "Strength c of c·Σ Ω(θ−θ*)² (the paper's permuted-MNIST value).")
    xi: float = opt(0.1, "Damping ξ in Ω += ω/(Δθ² + ξ).")
    form: str = opt("proximal", _FORM, choices=("proximal", "gradient"))
    include_global: bool = opt(True, _GLOBAL)


@dataclass
class MASOptions(_Options):
    """Memory aware synapses (Aljundi et al., ECCV 2018): label-free importance E|∂‖f(x)‖²/∂θ|."""

    section: ClassVar[str] = "mas"
    positive = ("batches", "batch_size")
    non_negative = ("lam",)
    unit = ("alpha",)

    lam: float = opt(1.0, "Strength λ of λ·Σ Ω(θ−θ*)².")
    alpha: float = opt(0.5, "Ω ← αΩ + (1−α)Ω_new when a candidate is consolidated (Avalanche's default).")
    batches: int = opt(8, "Held-out batches used to estimate the importance.")
    batch_size: int = opt(32, "Batch size for the importance estimate.")
    per_sample: bool = opt(True, _PER_SAMPLE)
    form: str = opt("proximal", _FORM, choices=("proximal", "gradient"))
    include_global: bool = opt(True, _GLOBAL)


@dataclass
class ANPyCOptions(_Options):
    """Adversarial neural pruning and synaptic consolidation (Peng et al., TNNLS 2021).

    Importance Ω = max(0, g·θ + ½θ²g²) with g the gradient of the output entropy (label
    free), accumulated by element-wise max. Part way through a candidate's training
    (``prune_at``), a share ``prune`` of its cell weights that no earlier candidate protects
    (Ω = 0) and that matter least to it is set to zero and held there for the rest of its
    training, freeing them for later candidates; the share shrinks by ``prune_decay`` with
    every consolidated candidate: 50%, 40%, 32%, 25.6%, ...
    """

    section: ClassVar[str] = "anpyc"
    positive = ("batches", "batch_size")
    non_negative = ("lam", "prune_min")
    unit = ("prune", "prune_decay", "prune_at")

    lam: float = opt(3.0, "Strength λ of λ·Σ Ω(θ−θ*)² (the paper's value).")
    batches: int = opt(4, "Held-out batches used to estimate the importance.")
    batch_size: int = opt(100, "Batch size for the importance estimate (the paper's 100).")
    prune: float = opt(0.5, "Share of the first candidate's free cell weights pruned (0: off; the paper's 50%).")
    prune_decay: float = opt(0.8, "The pruned share is multiplied by this after each candidate (the paper's 0.8).")
    prune_min: float = opt(0.01, "Pruning stops once the share falls below this.")
    prune_at: float = opt(0.5, "When a candidate prunes, as a fraction of its training steps; the steps after "
                               "it retrain the candidate with the pruned weights held at zero.")
    form: str = opt("proximal", _FORM, choices=("proximal", "gradient"))
    include_global: bool = opt(False, _GLOBAL + " Pruning never touches them.")


@dataclass
class HATOptions(_Options):
    """Hard attention to the task (Serrà et al., ICML 2018), one attention mask per candidate."""

    section: ClassVar[str] = "hat"
    positive = ("s_max", "thres_emb", "thres_cosh", "protect")
    non_negative = ("c",)

    c: float = opt(0.75, "Strength c of the sparsity regulariser on the attention masks (paper: 0.75).")
    s_max: float = opt(400.0, "Final gate steepness s_max; s is annealed from 1/s_max within each epoch.")
    thres_emb: float = opt(6.0, "Embeddings are clamped to ±thres_emb after each step.")
    thres_cosh: float = opt(50.0, "s·e is clamped to ±thres_cosh in the gradient compensation.")
    protect: int = opt(
        5, "Size of the protected set: the best candidates (by score at training) whose units are "
        "masked from later updates; a better candidate releases the worst, so the supernet never fills up.")
    include_global: bool = opt(
        True, "Also gate and protect the stem and reductions, as the paper gates every layer (heads are never "
        "gated). Off, the shared skeleton carries the forgetting: measured, HAT then drops more than naive.")


@dataclass
class DistillOptions(_Options):
    """Distillation from earlier candidates (LwF-style, Li & Hoiem, ECCV 2016)."""

    section: ClassVar[str] = "distill"
    positive = ("temperature", "protect", "teachers_per_step")
    non_negative = ("lam",)

    lam: float = opt(1.0, "Weight λ of the distillation loss (Avalanche's LwF default).")
    temperature: float = opt(2.0, "Softmax temperature T of the distillation targets.")
    protect: int = opt(5, "Teachers: the best candidates (by score at training) whose outputs are kept close.")
    teachers_per_step: int = opt(1, "Teachers distilled on each training batch (round robin among "
                                    "those sharing weights with the current candidate).")


@dataclass
class SyntheticOptions(_Options):
    """Synthetic rehearsal (after Masarczyk & Tautkute, CVPR-W 2020): a small learned data set per
    protected candidate, replayed with distillation while later candidates train."""

    section: ClassVar[str] = "synthetic"
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


#: Config section name -> options dataclass (one per strategy with options).
STRATEGY_SECTIONS: dict[str, type] = {
    cls.section: cls for cls in (WPLOptions, EWCOptions, OnlineEWCOptions, SIOptions, MASOptions, ANPyCOptions,
                                 HATOptions, DistillOptions, SyntheticOptions)
}
