"""Registries find their components: every module of their package, and plugins, which are the
entry points of installed packages. Packages are "installed" here by writing their metadata
(``*.dist-info``) and modules into a folder put on ``sys.path``, as pip would."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TINY_SPACE

import wpl_nas
from wpl_nas import registry
from wpl_nas.errors import ConfigError, PluginWarning
from wpl_nas.spaces import _space


def _install(site: Path, package: str, entry_points: dict[str, dict[str, str]], files: dict[str, str]) -> None:
    """Write ``files`` and, if it has entry points (``{group: {name: module}}``), package ``package``'s metadata."""
    if entry_points:
        info = site / f"{package.replace('-', '_')}-0.1.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(
            "".join(f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in points.items())
                    for group, points in entry_points.items()))
    for name, text in files.items():
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text(textwrap.dedent(text))


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder of installed packages on ``sys.path``; every plugin is loaded afresh while it is
    there, and the process's plugins are as before afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_FAILURES", {})
    registry.load_entry_points.cache_clear()
    _space._plugin_spaces.cache_clear()
    yield tmp_path
    for name, module in list(sys.modules.items()):  # only the test's modules: others may be imported lazily
        if str(getattr(module, "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]
    registry.load_entry_points.cache_clear()
    _space._plugin_spaces.cache_clear()


def test_a_module_added_to_the_package_registers_itself(site: Path) -> None:
    _install(site, "things", {}, {
        "things_pkg/__init__.py": """
            from wpl_nas.registry import Registry
            THINGS = Registry("thing", package=__name__)
            """,
        "things_pkg/b.py": "from things_pkg import THINGS\nTHINGS.add('b', 2)\n",
        "things_pkg/a.py": "from things_pkg import THINGS\nTHINGS.add('a', 1)\n",
    })
    from things_pkg import THINGS  # type: ignore[import-not-found]

    assert THINGS.items() == [("a", 1), ("b", 2)]  # imported on the first lookup, in file-name order


def test_a_strategy_plugin_registers_through_its_entry_point(site: Path) -> None:
    # A registry like wpl_nas.strategies.STRATEGIES, in a module of its own so the test leaves that one alone.
    _install(site, "demo-strategy", {"wpl_nas.strategies": {"demo": "demo_strategy"}}, {
        "strategy_home.py": """
            from wpl_nas.registry import Registry
            STRATEGIES = Registry("strategy", entry_points="wpl_nas.strategies")
            STRATEGIES.add("naive", object)
            """,
        "demo_strategy.py": """
            from strategy_home import STRATEGIES

            @STRATEGIES.register("demo")
            class DemoStrategy:
                pass
            """,
    })
    from strategy_home import STRATEGIES  # type: ignore[import-not-found]

    assert "demo_strategy" not in sys.modules  # nothing is imported before the first lookup
    assert STRATEGIES.names() == ["naive", "demo"]
    assert STRATEGIES.get("demo").__name__ == "DemoStrategy"


def test_a_broken_plugin_is_a_warning_and_asking_for_its_names_says_why(site: Path) -> None:
    _install(site, "broken-plugin", {"wpl_nas.test_datasets": {"broken": "broken_plugin", "greedy": "greedy_plugin"}}, {
        "broken_plugin.py": "raise ImportError('needs the foo library')\n",
        # Takes a name that is already registered.
        "greedy_plugin.py": "import data_home\ndata_home.DATA.add('mine', 2)\n",
        "data_home.py": "from wpl_nas.registry import Registry\nDATA = Registry('dataset', entry_points="
                        "'wpl_nas.test_datasets')\nDATA.add('mine', 1)\n",
    })
    from data_home import DATA  # type: ignore[import-not-found]

    with pytest.warns(PluginWarning) as caught:
        assert DATA.names() == ["mine"]
    messages = [str(w.message) for w in caught]
    assert messages == [
        "plugin 'broken' (entry point 'broken_plugin' in group 'wpl_nas.test_datasets' of package 'broken-plugin') "
        "failed to load (ImportError: needs the foo library); going on without it",
        "plugin 'greedy' (entry point 'greedy_plugin' in group 'wpl_nas.test_datasets' of package 'broken-plugin') "
        "failed to load (ValueError: dataset 'mine' is already registered); going on without it"]
    assert DATA.get("mine") == 1
    with pytest.raises(ConfigError, match=r"unknown dataset 'brokn'.*valid choices: mine; not loaded: plugin 'broken'"
                                          r".*needs the foo library.*plugin 'greedy'"):
        DATA.get("brokn")


def test_a_plugin_ships_spaces_by_name(site: Path) -> None:
    tiny = TINY_SPACE.replace("name: tiny1d", "name: plugin-tiny")
    _install(site, "space-plugin", {"wpl_nas.spaces": {"mine": "space_plugin"}}, {
        "space_plugin/__init__.py": "",
        "space_plugin/plugin-tiny.yaml": tiny,
        "space_plugin/nb201.yaml": tiny,  # a built-in name: left out
    })
    with pytest.warns(PluginWarning, match=r"plugin 'mine' .* of package 'space-plugin'\): its space 'nb201' .* is "
                                           r"left out: the name is taken"):
        spaces = wpl_nas.named_spaces()
    assert spaces["plugin-tiny"] == site / "space_plugin" / "plugin-tiny.yaml"
    assert spaces["nb201"] == wpl_nas.builtin_spaces()["nb201"]
    assert wpl_nas.load_space("plugin-tiny").name == "plugin-tiny"

