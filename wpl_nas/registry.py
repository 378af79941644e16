"""Name -> component registries with helpful unknown-name errors, filled by modules and plugins.

Every pluggable family (operations, strategies, datasets, space kinds, scenarios) is a
:class:`Registry`. Components register with a decorator and are created by name::

    STRATEGIES = Registry("strategy", entry_points="wpl_nas.strategies")

    @STRATEGIES.register("naive")
    class NaiveStrategy(Strategy): ...

    STRATEGIES.get("naive")       # -> NaiveStrategy
    STRATEGIES.get("nieve")       # ConfigError: unknown strategy 'nieve' (did you mean 'naive'?); valid choices: ...

Registration is a module's import side effect, so a registry imports the modules that may
register into it before its first lookup: every module of its ``package`` (a file dropped into
``wpl_nas/data/`` registers its dataset with no other edit), then the entry points of its
``entry_points`` group, which is how other installed packages add components (plugins).
"""

from __future__ import annotations

import difflib
import functools
import importlib
import pkgutil
import warnings
from collections.abc import Callable, Iterator
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Generic, TypeVar

from wpl_nas.errors import ConfigError, PluginWarning, reason

__all__ = ["Registry", "load_entry_points", "plugin_failures"]

T = TypeVar("T")


class Registry(Generic[T]):
    """An ordered mapping from names to components of one kind.

    Plugins: an installed package declares, in its ``pyproject.toml``, an entry point in the
    registry's group whose value is a **module** (``demo = "my_package.module"``). Before its first
    lookup or listing, the registry imports every such module; the module registers its components
    with the registry's decorator, exactly as a built-in module does (the entry point's name is
    only a label for messages; one module may register several components, or serve several
    groups). A plugin that fails to import, or registers a name already taken, is left out with a
    :class:`~wpl_nas.errors.PluginWarning` naming its package and entry point, and asking for one
    of its names then fails with a :class:`~wpl_nas.errors.ConfigError` that says why.

    Args:
        kind: What the registry holds, used in error messages ("strategy", "dataset", ...).
        package: A package (``"wpl_nas.data"``) whose modules are all imported before the first
            lookup, so that a new module there registers itself with no other edit. An error in
            one of them propagates: it is a bug of this package, not a plugin's.
        entry_points: The entry point group of its plugins (``"wpl_nas.datasets"``), loaded after
            the package's modules.
    """

    def __init__(self, kind: str, *, package: str | None = None, entry_points: str | None = None) -> None:
        self.kind = kind
        self.package = package
        self.entry_points = entry_points
        self._items: dict[str, T] = {}
        self._package_pending = package is not None
        self._plugins_pending = entry_points is not None

    def _import_package(self) -> None:
        if self._package_pending:
            self._package_pending = False  # first: the modules imported below register into this registry
            assert self.package is not None
            root = importlib.import_module(self.package)
            for module in pkgutil.iter_modules(root.__path__):
                importlib.import_module(f"{self.package}.{module.name}")

    @property
    def _entries(self) -> dict[str, T]:
        """The components, after every module that may register one is imported."""
        self._import_package()
        if self._plugins_pending:
            self._plugins_pending = False
            assert self.entry_points is not None
            load_entry_points(self.entry_points)
        return self._items

    def register(self, name: str) -> Callable[[T], T]:
        """Return a decorator that registers its argument under ``name``.

        Raises:
            ValueError: ``name`` is already registered (a plugin that does this is left out with a warning).
        """
        if _plugins_loading:
            # The package's own modules register first, so that a plugin (which another registry may
            # load first) cannot take one of their names and break their import.
            self._import_package()

        def decorator(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            return item

        return decorator

    def add(self, name: str, item: T) -> None:
        """Register ``item`` under ``name`` (the non-decorator form)."""
        self.register(name)(item)

    def unregister(self, name: str) -> None:
        """Forget ``name`` (e.g. a component a test registered).

        Raises:
            ConfigError: ``name`` is not registered.
        """
        self.get(name)
        del self._items[name]

    def get(self, name: str) -> T:
        """Return the component called ``name``.

        Raises:
            ConfigError: ``name`` is not registered; the message lists the valid names.
        """
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        """The error text for an unknown ``name``: a close match if any, all choices, and the
        plugins of this registry's group that failed to load."""
        message = f"unknown {self.kind} {name!r}"
        close = difflib.get_close_matches(str(name), self._entries, n=1)
        if close:
            message += f" (did you mean {close[0]!r}?)"
        message += f"; valid choices: {', '.join(self._entries)}"
        return message + plugin_failures(self.entry_points)

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        """The ``(name, component)`` pairs, in registration order."""
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


#: Why plugins failed to load, by entry point group (see :func:`load_entry_points`).
_FAILURES: dict[str, list[str]] = {}
#: Whether a plugin is being imported (not this package: its modules may be mid-import themselves).
_plugins_loading = False


@functools.cache
def load_entry_points(group: str) -> list[tuple[EntryPoint, ModuleType]]:
    """Import the module of every entry point of ``group``, once per process.

    Returns:
        ``[(entry point, its module)]`` for those that imported. One that did not is left out
        with a :class:`~wpl_nas.errors.PluginWarning` naming its package and entry point (its
        reason is also added to the unknown-name errors of the group: :func:`plugin_failures`).
    """
    global _plugins_loading
    loaded = []
    for point in entry_points(group=group):
        before, _plugins_loading = _plugins_loading, True
        try:
            point.load()
            loaded.append((point, importlib.import_module(point.module)))
        except Exception as error:  # a plugin's bug must not stop a run that does not use it
            why = f"{plugin_label(point)} failed to load ({type(error).__name__}: {reason(error)})"
            _FAILURES.setdefault(group, []).append(why)
            warnings.warn(f"{why}; going on without it", PluginWarning, stacklevel=2)
        finally:
            _plugins_loading = before
    return loaded


def plugin_label(point: EntryPoint) -> str:
    """How messages name a plugin: its entry point, group and package."""
    package = point.dist.name if point.dist is not None else "an unknown package"
    return f"plugin {point.name!r} (entry point {point.value!r} in group {point.group!r} of package {package!r})"


def plugin_failures(group: str | None) -> str:
    """``""``, or a sentence to append to an unknown-name error: the plugins of ``group`` that failed to load."""
    failures = _FAILURES.get(group, []) if group else []
    return f"; not loaded: {'; '.join(failures)}" if failures else ""
