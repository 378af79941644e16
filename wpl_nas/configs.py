"""The config engine: option dataclasses built from mappings, checked, replaced, and written as YAML.

Every set of options in wpl-nas is a dataclass of one of two kinds:

* :class:`Options`: flat fields, each made with :func:`opt` (a default and its help text). A
  strategy's options are one (``WPLOptions`` in ``wpl_nas/strategies/wpl.py``).
* :class:`Config`: :class:`Options` plus one *section* per registered strategy that has options,
  generated from the strategy registry (``wpl_nas.strategies.STRATEGIES``). A section is a
  top-level key in YAML (``wpl: {alpha: 300}``) and a flag prefix on the command line
  (``--wpl-alpha 300``). :class:`~wpl_nas.config.SearchConfig` and
  :class:`~wpl_nas.lab.LabConfig` are configs.

Both are built from (possibly partial) mappings with type coercion and errors that name the
key, the value and the valid choices; validated by the ranges and choices each class declares;
copied with overrides (:meth:`Options.replace`); and read from and written to YAML.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from wpl_nas.errors import ConfigError

__all__ = ["Config", "Options", "coerce_field", "field_type", "opt", "read_yaml_mapping", "require_finite",
           "section_name"]

T = TypeVar("T", bound="Options")
C = TypeVar("C", bound="Config")


def opt(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with a default and its help text (shown by ``--help``); ``choices=(...)``
    restricts its values."""
    return field(default=default, metadata={"help": help, **kw})


def section_name(strategy: str) -> str:
    """The config section (YAML key) of strategy ``strategy``: ``online-ewc`` -> ``online_ewc``."""
    return strategy.replace("-", "_")


def require_finite(obj: Any, prefix: str = "") -> None:
    """Every float field of dataclass ``obj`` is finite (range checks let NaN through: nan <= 0 is False).

    Raises:
        ConfigError: naming the first field that is NaN or infinite.
    """
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{prefix}{f.name} must be a finite number, but got {f.name}={value!r}")


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of ``cls``, resolved once per class: resolving them all for each of a
    config's 30 fields was most of the time ``wpl-nas search --help`` took after Python's start."""
    return typing.get_type_hints(cls)


def field_type(cls: type, name: str) -> Any:
    """The resolved type of field ``name`` of dataclass ``cls``, with ``X | None`` unwrapped."""
    hint = _type_hints(cls)[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0]
    return hint


def coerce_field(value: Any, cls: type, name: str, where: str) -> Any:
    """``value`` as the type of field ``name`` of dataclass ``cls`` (ints pass as floats; NaN and
    infinity do not), or a ConfigError naming ``where`` and the key."""
    kind = field_type(cls, name)
    optional = _type_hints(cls)[name] != kind
    if value is None and optional:
        return None
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
        if ok and not math.isfinite(value):  # NaN slips through every range check (nan <= 0 is False)
            raise ConfigError(f"{where}: key {name!r} must be a finite number, but got {value!r}")
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise ConfigError(f"{where}: key {name!r} must be of type {kind.__name__}, but got {value!r}")
    return value


def read_yaml_mapping(path: str | Path) -> Mapping[str, Any]:
    """The mapping in YAML file ``path`` (an empty file is an empty mapping).

    Raises:
        ConfigError: missing file, malformed YAML or not a mapping, naming the file.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text (a binary file?)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: a config file must be a mapping of keys to values, but got {data!r}")
    return data


#: The range checks :meth:`Options.validate` makes, by the class attribute that lists the fields:
#: (test, what the message says). Written so that NaN fails every one.
_RANGES: dict[str, tuple[typing.Callable[[Any], bool], str]] = {
    "positive": (lambda v: v > 0, "> 0"),
    "non_negative": (lambda v: v >= 0, ">= 0"),
    "unit": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "open_unit": (lambda v: 0 < v < 1, "in (0, 1)"),
}


class Options:
    """Base of every options dataclass: build from a mapping, validate, replace, YAML.

    Subclasses are dataclasses whose fields are made with :func:`opt`; they declare their range
    checks by listing field names (a None value passes: "not set").
    """

    #: The prefix of the keys in messages: a strategy's config section (``wpl``; set when the strategy
    #: registers, from its registry name), empty for a whole config.
    section: ClassVar[str] = ""
    positive: ClassVar[tuple[str, ...]] = ()
    non_negative: ClassVar[tuple[str, ...]] = ()
    unit: ClassVar[tuple[str, ...]] = ()  # in [0, 1]
    open_unit: ClassVar[tuple[str, ...]] = ()  # in (0, 1)
    #: Options that may change when a search is resumed (see ``SearchConfig.may_change_on_resume``).
    resumable: ClassVar[tuple[str, ...]] = ()
    #: Keys of a YAML file that are records beside the options (e.g. a run's command line), skipped by :meth:`load`.
    record_keys: ClassVar[tuple[str, ...]] = ()

    # --- building ----------------------------------------------------------------------
    @classmethod
    def option_fields(cls) -> list[dataclasses.Field[Any]]:
        """The fields that are options (one flag and one YAML key each)."""
        return list(dataclasses.fields(cls))  # type: ignore[arg-type]

    @classmethod
    def section_types(cls) -> dict[str, type[Options]]:
        """Nested sections, ``{key: options class}``: none for plain options."""
        return {}

    @classmethod
    def coerce(cls, name: str, value: Any, where: str) -> Any:
        """``value`` as the type of field ``name``, or a ConfigError naming ``where`` and the key."""
        return coerce_field(value, cls, name, where)

    @classmethod
    def from_dict(cls: type[T], data: Mapping[str, Any], *, where: str = "config") -> T:
        """Build from a (possibly partial) mapping; unknown keys and wrong types are errors.

        Raises:
            ConfigError: an unknown key (with a close match, and the valid keys), a value of the wrong
                type, or a section that is not a mapping; the message names ``where`` and the key.
        """
        names = [f.name for f in cls.option_fields()]
        nested = cls.section_types()
        kwargs: dict[str, Any] = {}
        sections: dict[str, Options] = {}
        for key, value in data.items():
            if key in nested:
                if not isinstance(value, Mapping):
                    raise ConfigError(f"{where}: key {key!r} must be a mapping of options, but got {value!r}")
                sections[key] = nested[key].from_dict(value, where=f"{where}: {key}")
            elif key in names:
                kwargs[key] = cls.coerce(key, value, where)
            else:
                valid = [*names, *nested]
                close = difflib.get_close_matches(str(key), valid, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"{where}: unknown key {key!r}{hint}; valid keys: {', '.join(valid)}")
        if nested:
            kwargs["sections"] = sections
        return cls(**kwargs)

    @classmethod
    def load(cls: type[T], path: str | Path) -> T:
        """Read a YAML file (any subset of the keys; :attr:`record_keys` are skipped).

        Raises:
            ConfigError: missing file, malformed YAML, not a mapping, unknown key or wrong type;
                the message names the file and the key.
        """
        data = {k: v for k, v in read_yaml_mapping(path).items() if k not in cls.record_keys}
        return cls.from_dict(data, where=str(path))

    # --- checks ------------------------------------------------------------------------
    def validate(self: T) -> T:
        """Check finiteness, the declared ranges and the ``choices`` of every field; return self.

        Raises:
            ConfigError: naming the (section and) key and the value of the first bad option, and the
                valid choices where there are some.
        """
        prefix = f"{self.section}." if self.section else ""
        require_finite(self, prefix=prefix)
        for attribute, (ok, what) in _RANGES.items():
            for name in getattr(self, attribute):
                value = getattr(self, name)
                if value is not None and not ok(value):
                    raise ConfigError(f"{prefix}{name} must be {what}, but got {name}={value!r}")
        for f in self.option_fields():
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise ConfigError(f"unknown {prefix}{f.name} {value!r}; valid choices: "
                                  f"{', '.join(map(str, choices))}")
        return self

    # --- copies and YAML ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain data in the YAML layout."""
        return {f.name: getattr(self, f.name) for f in self.option_fields()}

    def replace(self: T, **overrides: Any) -> T:
        """A copy with fields overridden; a section takes a partial mapping (``wpl={"alpha": 3.0}``)
        or a whole options instance (``wpl=WPLOptions(alpha=3.0)``).

        Raises:
            ConfigError: as :meth:`from_dict`.
        """
        data = self.to_dict()
        for key, value in overrides.items():
            if key in self.section_types() and isinstance(value, Options):
                value = value.to_dict()
            if key in self.section_types() and isinstance(value, Mapping):
                value = {**data[key], **value}
            data[key] = value
        return type(self).from_dict(data)

    def dump(self, path: str | Path, *, extra: Mapping[str, Any] | None = None) -> None:
        """Write the options (plus ``extra`` keys such as the command line) as YAML, atomically (a
        reader, or an interruption, sees the old file or the new one). No password is written: every
        ``scheme://user:password@`` in it (a storage URL, a command line) reads ``***``."""
        from wpl_nas.storage import mask_storage
        from wpl_nas.tracking.checkpoint import write_text_atomically  # torch: only when writing a run

        text = yaml.safe_dump({**self.to_dict(), **(extra or {})}, sort_keys=False, allow_unicode=True)
        write_text_atomically(path, mask_storage(text))


@dataclass
class Config(Options):
    """Options plus one section per registered strategy with options (a top-level key each).

    Attributes:
        sections: ``{section: options}``, one per strategy of the registry that has options, keyed by
            :func:`section_name` (``online_ewc``); any left out get their defaults.
    """

    #: The strategy registry the sections come from. It sets itself here when its module is
    #: imported: the engine sits below the strategies, so it is told about them rather than
    #: importing them. :meth:`registry` imports :attr:`strategy_registry_module` on first need (the
    #: strategies import torch), so a config class is importable, and ``--help`` answers, without torch.
    strategy_registry: ClassVar[Any] = None
    #: The module that fills :attr:`strategy_registry` (a subclass names it; None: no sections).
    strategy_registry_module: ClassVar[str | None] = None

    sections: dict[str, Options] = field(default_factory=dict, metadata={"help": "The strategies' options."})

    def __post_init__(self) -> None:
        self.sections = {**{key: cls() for key, cls in self.section_types().items()}, **self.sections}

    @classmethod
    def option_fields(cls) -> list[dataclasses.Field[Any]]:
        return [f for f in dataclasses.fields(cls) if f.name != "sections"]

    @classmethod
    def registry(cls) -> Any:
        """The strategy registry, its module imported on first call (None without one)."""
        if Config.strategy_registry is None and cls.strategy_registry_module is not None:
            importlib.import_module(cls.strategy_registry_module)  # sets Config.strategy_registry
        return Config.strategy_registry

    @classmethod
    def section_types(cls) -> dict[str, type[Options]]:
        """``{section: options class}`` of every registered strategy with options, from the registry
        as it is now (so a strategy registered after this module was imported has its section)."""
        registry = cls.registry()
        sections: dict[str, type[Options]] = {} if registry is None else registry.sections()
        return sections

    @property
    def strategy_options(self) -> Mapping[str, Options]:
        """Each strategy's options by its registry name (``online-ewc``): what
        :func:`~wpl_nas.strategies.create_strategy` takes its options from."""
        return types.MappingProxyType({name: self.sections[section_name(name)] for name in self.registry() or ()
                                       if section_name(name) in self.sections})

    def validate(self: C) -> C:
        """Check the options (see :meth:`Options.validate`), then every section; return self."""
        super().validate()
        for section in self.sections.values():
            section.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain data, with the strategy sections as top-level keys (the YAML layout)."""
        return {**super().to_dict(), **{key: section.to_dict() for key, section in self.sections.items()}}

    def flat(self) -> dict[str, Any]:
        """Every option by its dotted name: top-level fields as they are, section options as
        ``section.key`` (``wpl.alpha``)."""
        out = super().to_dict()
        for key, section in self.sections.items():
            out.update({f"{key}.{name}": value for name, value in section.to_dict().items()})
        return out
