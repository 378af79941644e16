"""The search-space base class, the registry of space kinds, and loading spaces by name or path.

A space file says which kind of space it describes (``kind: cell`` when it says nothing); the
kind's class reads the rest of the file. Every kind exposes its choices the same way: a mapping
from choice labels to the values allowed there, which is exactly the Optuna search space.

A kind is one module: a module of this package (or a plugin's, entry point group
``wpl_nas.space_kinds``) that registers its space class in :data:`SPACE_KINDS` and its network in
:data:`wpl_nas.supernet.SUPERNETS` under the same name. Named spaces are the YAML files of
``search_spaces/`` and those that plugins ship (entry point group ``wpl_nas.spaces``).
"""

from __future__ import annotations

import functools
import itertools
import math
import random
import warnings
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import networkx as nx
import optuna
import yaml

from wpl_nas.errors import ConfigError, PluginWarning
from wpl_nas.registry import Registry, load_entry_points, plugin_failures, plugin_label
from wpl_nas.spaces._architecture import Architecture, Genotype

__all__ = ["SPACE_KINDS", "SearchSpace", "SpecReader", "builtin_spaces", "load_space", "named_spaces", "same_space",
           "space_file"]

#: Space classes by the ``kind`` a space file names: this package's modules and plugins register theirs.
SPACE_KINDS: Registry[type[SearchSpace]] = Registry("search space kind", package=__package__,
                                                    entry_points="wpl_nas.space_kinds")
#: The entry point group of plugins that ship space files: each names a package whose ``*.yaml`` files are spaces.
SPACES_GROUP = "wpl_nas.spaces"


class SpecReader:
    """Checks one space file's parsed YAML; every error names the file, the field and the problem."""

    def __init__(self, source: Path | None) -> None:
        self.where = str(source) if source else "search space"

    def fail(self, field: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.where}: field {field!r}: {problem}")

    def mapping(self, value: Any, field: str, keys: Collection[str], *,
                optional: Collection[str] = ("description", "citation", "kind")) -> Mapping[str, Any]:
        """``value`` as a mapping with exactly ``keys`` (those in ``optional`` may be left out)."""
        if not isinstance(value, Mapping):
            raise self.fail(field, f"must be a mapping, but got {value!r}")
        unknown = sorted(set(value) - set(keys))
        if unknown:
            raise self.fail(field, f"unknown key(s) {unknown}; valid keys: {sorted(keys)}")
        missing = sorted(set(keys) - set(value) - set(optional))
        if missing:
            raise self.fail(field, f"missing key(s) {missing}")
        return value

    def positive_int(self, value: Any, field: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.fail(field, f"must be a positive integer, but got {value!r}")
        return value

    def int_choices(self, value: Any, field: str) -> tuple[int, ...]:
        """A non-empty list of distinct positive integers."""
        if not isinstance(value, list) or not value:
            raise self.fail(field, f"must be a non-empty list of positive integers, but got {value!r}")
        items = tuple(self.positive_int(v, field) for v in value)
        if len(set(items)) != len(items):
            raise self.fail(field, f"lists a value twice: {list(items)}")
        return items

    def names(self, value: Any, field: str, valid: Registry[Any] | Collection[str]) -> tuple[str, ...]:
        """A non-empty list of distinct names, each one of ``valid``."""
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise self.fail(field, f"must be a non-empty list of names, but got {value!r}")
        for v in value:
            if v not in valid:
                message = (valid.unknown_message(v) if isinstance(valid, Registry)
                           else f"unknown name {v!r}; valid choices: {', '.join(valid)}")
                raise self.fail(field, message)
        if len(set(value)) != len(value):
            raise self.fail(field, f"lists a name twice: {value}")
        return tuple(value)


@dataclass(frozen=True, eq=False, kw_only=True)
class SearchSpace:
    """A search space: named choices, each with its allowed values, and how to build it.

    Subclasses (one per ``kind``) give :attr:`choices`, read their file in :meth:`from_spec`,
    and may refine :meth:`make`, :meth:`validate`, :meth:`parse`, :meth:`describe` and
    :meth:`dag`. Suggesting, sampling, enumerating and counting are shared: they only need
    the choices. The supernet of a kind is registered in :data:`wpl_nas.supernet.SUPERNETS` (in
    the kind's own module, for a new kind: see the module docstring).

    Attributes:
        name: Short name (``nb201``).
        description: One line for listings.
        citation: Where the space comes from.
        dims: The inputs it takes: 1 for sequences ``(B, C, L)``, 2 for images ``(B, C, H, W)``,
            0 for token sequences ``(B, T)``, None for any fixed-size input (it is flattened).
        source: The YAML file it was read from, if any.
    """

    kind: ClassVar[str] = ""
    name: str
    description: str
    citation: str
    dims: int | None
    source: Path | None = None

    # --- the choices ------------------------------------------------------------------
    @property
    def choices(self) -> dict[str, tuple[str, ...]]:
        """``{choice label: allowed values}`` in a fixed order: the Optuna search space."""
        raise NotImplementedError

    @property
    def size(self) -> int:
        """Number of distinct architectures."""
        return math.prod(len(values) for values in self.choices.values())

    def make(self, values: Mapping[str, str], *, head: int = 0) -> Architecture:
        """The architecture that picks ``values`` (``{label: value}``, one per choice)."""
        return Genotype.of({label: values[label] for label in self.choices}, head=head)

    def suggest(self, trial: optuna.Trial) -> Architecture:
        """Ask ``trial`` for one value per choice (one ``suggest_categorical`` per label)."""
        return self.make({label: trial.suggest_categorical(label, list(values))
                          for label, values in self.choices.items()})

    def sample(self, rng: random.Random) -> Architecture:
        """A uniformly random architecture."""
        return self.make({label: rng.choice(values) for label, values in self.choices.items()})

    def enumerate(self) -> Iterator[Architecture]:
        """Every architecture of the space, in a fixed order."""
        labels = list(self.choices)
        for values in itertools.product(*self.choices.values()):
            yield self.make(dict(zip(labels, values, strict=True)))

    def validate(self, arch: Architecture) -> Architecture:
        """Return ``arch`` if it belongs to this space.

        Raises:
            ConfigError: a choice is missing or extra, or a value is not allowed.
        """
        given = dict(arch.items()) if isinstance(arch, Genotype) else None
        if given is None:
            raise ConfigError(f"architecture {str(arch)!r} does not fit space {self.name!r} "
                              f"(a {self.kind} space; example: {next(self.enumerate())})")
        missing = [label for label in self.choices if label not in given]
        extra = [label for label in given if label not in self.choices]
        if missing or extra:
            raise ConfigError(f"architecture {str(arch)!r} does not fit space {self.name!r}: "
                              f"missing choices {missing}, unexpected choices {extra}")
        for label, values in self.choices.items():
            if given[label] not in values:
                raise ConfigError(f"architecture {str(arch)!r}: value {given[label]!r} of {label} is not in "
                                  f"space {self.name!r}; valid choices: {', '.join(values)}")
        return self.make(given, head=arch.head)  # in the space's label order

    def parse(self, text: str) -> Architecture:
        """Parse an architecture string and check it against this space."""
        try:
            arch = Genotype.parse(text)
        except ConfigError as exc:
            example = next(self.enumerate())
            raise ConfigError(f"{exc}; architectures of space {self.name!r} look like {example}") from None
        return self.validate(arch)

    def check_data(self, data_name: str, input_shape: tuple[int, ...]) -> None:
        """Raise :class:`ConfigError` unless data of per-sample ``input_shape`` fits the space."""
        data_dims = len(input_shape) - 1
        fits = data_dims >= 1 if self.dims is None else data_dims == self.dims
        if not fits:
            def kind(dims: int | None) -> str:
                return {None: "fixed-size", 0: "token-sequence"}.get(dims, f"{dims}-D")

            raise ConfigError(
                f"space {self.name!r} is for {kind(self.dims)} inputs, but dataset {data_name!r} is "
                f"{kind(data_dims)} (per-sample shape {input_shape}); pick a matching --space or --dataset")

    # --- reading and drawing ----------------------------------------------------------
    def summary_lines(self) -> list[str]:
        """Kind-specific lines of :meth:`describe` (the structure, not the choices)."""
        return []

    def describe(self) -> str:
        """A multi-line, human-readable description (used by ``wpl-nas spaces show``)."""
        lines = [
            f"{self.name}: {self.description}",
            f"  source:        {self.source if self.source else '(built in code)'}",
            f"  citation:      {self.citation}",
            f"  kind:          {self.kind}",
            *self.summary_lines(),
            f"  architectures: {self.size:,}",
            "  choices:",
        ]
        width = max(len(label) for label in self.choices)
        lines += [f"    {label:>{width}}: {' | '.join(values)}" for label, values in self.choices.items()]
        lines.append(f"  example:       {next(self.enumerate())}")
        return "\n".join(lines)

    def dag(self, arch: Architecture | None = None) -> nx.DiGraph:
        """The graph to draw: ``arch``'s network, or with no ``arch`` the space's choices.

        Nodes carry ``label`` and ``pos`` ``(x, y)``; edges carry ``label`` and ``live`` (drawn
        solid, else faint). The default is a chain of the choices.
        """
        graph = nx.DiGraph()
        items = list(arch.items()) if arch is not None else [(k, "|".join(v)) for k, v in self.choices.items()]
        for i, (label, value) in enumerate(items):
            graph.add_node(i, label=f"{label}\n{value}", pos=(float(i), 0.0))
            if i:
                graph.add_edge(i - 1, i, label="", live=True)
        return graph

    @classmethod
    def from_spec(cls, data: Mapping[str, Any], read: SpecReader, *, source: Path | None) -> SearchSpace:
        """Build a space of this kind from its file's parsed top-level mapping."""
        raise NotImplementedError

    @staticmethod
    def common(data: Mapping[str, Any], read: SpecReader) -> dict[str, Any]:
        """The fields every kind has: ``name``, ``description``, ``citation``."""
        name = data["name"]
        if not isinstance(name, str) or not name:
            raise read.fail("name", f"must be a non-empty string, but got {name!r}")
        return {"name": name, "description": str(data.get("description", "")),
                "citation": str(data.get("citation", ""))}

    # --- loading ---------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path) -> SearchSpace:
        """Read and validate a space file.

        Raises:
            ConfigError: the file is missing, not YAML, or invalid; the message names the
                file, the field and the problem.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read search space file {str(path)!r}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"search space file {str(path)!r} is not UTF-8 text (a binary file?)") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        return cls.from_dict(data, source=path)

    @classmethod
    def from_dict(cls, data: Any, *, source: Path | None = None) -> SearchSpace:
        """Build a space from the parsed YAML mapping (see ``search_spaces/*.yaml``)."""
        read = SpecReader(source)
        if not isinstance(data, Mapping):
            raise read.fail("<top level>", f"must be a mapping, but got {data!r}")
        kind = data.get("kind", "cell")
        if kind not in SPACE_KINDS:
            raise read.fail("kind", SPACE_KINDS.unknown_message(kind))
        space = SPACE_KINDS.get(kind).from_spec(data, read, source=source)
        values = sum(len(v) for v in space.choices.values())
        if values > MAX_CHOICE_VALUES:
            raise read.fail("<top level>", f"has {len(space.choices):,} choices with {values:,} values in all, more "
                            f"than the limit of {MAX_CHOICE_VALUES:,}: its supernet (one module per value and "
                            "cell) would take too long to build and not fit in memory; make the cell smaller")
        return space


#: The most choice values a space may have (the built-in spaces have at most ~200): a supernet holds
#: one module per value (and cell), so a 400-node cell's 160,000 would hang its construction.
MAX_CHOICE_VALUES = 10_000


def builtin_spaces() -> dict[str, Path]:
    """``{name: file}`` for the spaces shipped in ``search_spaces/``."""
    try:
        root = Path(str(resources.files("wpl_nas.search_spaces")))
    except ModuleNotFoundError:
        # Imported straight from a source checkout (the repository root is on sys.path), where
        # the installed name does not exist: the files sit at the top of the repository.
        root = Path(__file__).resolve().parents[2] / "search_spaces"
    return {f.stem: f for f in sorted(root.glob("*.yaml"))}


def named_spaces() -> dict[str, Path]:
    """``{name: file}`` for every space known by name: the built-in ones (:func:`builtin_spaces`), then
    those of installed plugins (entry point group ``wpl_nas.spaces``: the ``*.yaml`` files of the
    package each entry point names). A plugin's space whose name is taken is left out with a warning.
    """
    return {**builtin_spaces(), **_plugin_spaces()}


@functools.cache
def _plugin_spaces() -> dict[str, Path]:
    taken = builtin_spaces()
    spaces: dict[str, Path] = {}
    for point, module in load_entry_points(SPACES_GROUP):
        folders = getattr(module, "__path__", None) or [Path(str(module.__file__)).parent]
        for file in sorted(f for folder in folders for f in Path(folder).glob("*.yaml")):
            other = taken.get(file.stem) or spaces.get(file.stem)
            if other is not None:
                warnings.warn(f"{plugin_label(point)}: its space {file.stem!r} ({file}) is left out: the name is "
                              f"taken by {other}", PluginWarning, stacklevel=2)
            else:
                spaces[file.stem] = file
    return spaces


def load_space(name_or_path: str | Path) -> SearchSpace:
    """Load a space by name (built in, or a plugin's), or a user's space file by path.

    Raises:
        ConfigError: unknown name (the message lists the named spaces) or invalid file.
    """
    text = str(name_or_path)
    if space_file(text) is not None:
        return SearchSpace.from_yaml(text)
    spaces = named_spaces()
    if text not in spaces:
        raise ConfigError(
            f"unknown search space {text!r}; valid choices: {', '.join(spaces)} "
            f"(or a path to a space .yaml file){plugin_failures(SPACES_GROUP)}"
        )
    return SearchSpace.from_yaml(spaces[text])


def space_file(name_or_path: str | Path) -> Path | None:
    """The user's space file that ``name_or_path`` names, or None for a built-in space's name."""
    text = str(name_or_path)
    return Path(text) if text.endswith((".yaml", ".yml")) or Path(text).is_file() else None


def same_space(a: str | Path, b: str | Path) -> bool:
    """Whether two ``--space`` values name the same space: the same name, or two files that hold the
    same YAML mapping (a run's copy of its space file and the file it was copied from, opened from
    another folder). A file that cannot be read is the same as nothing else."""
    if str(a) == str(b):
        return True
    first, second = space_file(a), space_file(b)
    if first is None or second is None:
        return False
    try:
        texts = [yaml.safe_load(f.read_text(encoding="utf-8")) for f in (first, second)]
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return texts[0] is not None and texts[0] == texts[1]
