"""A help that can be read: `search --help` without every strategy's options, and `wpl-nas strategies`
(`strategies show NAME`) that lists them; the options themselves keep working."""

from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner

from wpl_nas.cli import cli
from wpl_nas.config import SearchConfig
from wpl_nas.configs import section_name
from wpl_nas.strategies import STRATEGIES

SECTIONS = SearchConfig.section_types()

POINTER = "`wpl-nas strategies show NAME` lists those of strategy NAME"


def _flags(section: str) -> list[str]:
    return ["--" + f"{section}_{f.name}".replace("_", "-") for f in SECTIONS[section].option_fields()]


@pytest.mark.parametrize("command", ["search", "forgetting"])
def test_help_points_to_the_strategy_options_instead_of_listing_them(command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())  # the pointer may wrap
    assert POINTER in text
    assert not [flag for section in SECTIONS for flag in _flags(section) if f"{flag} " in result.output]
    assert "--strateg" in result.output and "--threads" in result.output  # the common options stay
    # (--epoch-scores / --no-epoch-scores, the longest flag, widens the flag column: ~175 lines for search)
    assert len(result.output.splitlines()) < 180


def test_search_help_lists_every_option_that_is_not_a_strategy_s():
    output = CliRunner().invoke(cli, ["search", "--help"]).output
    top_level = [f.name for f in SearchConfig.option_fields()]
    assert "sections" not in top_level and "trials" in top_level
    assert all("--" + name.replace("_", "-") in output for name in top_level)


def test_a_hidden_strategy_option_is_still_read(tmp_path):
    result = CliRunner().invoke(cli, ["search", "--runs-dir", str(tmp_path), "--wpl-alpha", "-1"])
    assert result.exit_code == 2 and "wpl.alpha must be >= 0" in result.output, result.output
    result = CliRunner().invoke(cli, ["forgetting", "--runs-dir", str(tmp_path), "--ewc-lam", "-1"])
    assert result.exit_code == 2 and "lam" in result.output, result.output
    assert not any(tmp_path.iterdir())


def test_strategies_lists_every_registered_strategy_with_its_kind():
    result = CliRunner().invoke(cli, ["strategies"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split()[1] for line in result.output.splitlines()[:len(STRATEGIES)]}
    assert rows == {name: STRATEGIES.get(name).family for name in STRATEGIES.names()}
    assert "strategies show NAME" in result.output


@pytest.mark.parametrize("name", [n for n in STRATEGIES.names() if STRATEGIES.get(n).Options])
def test_strategies_show_lists_each_option_with_its_default_and_help(name):
    section = section_name(name)
    result = CliRunner().invoke(cli, ["strategies", "show", name])
    assert result.exit_code == 0, result.output
    packed = "".join(result.output.split())  # the help wraps anywhere, hyphens included
    defaults = SECTIONS[section]()
    for f, flag in zip(dataclasses.fields(defaults), _flags(section), strict=True):
        assert flag in result.output, flag
        assert "".join(f"{f.metadata['help']} [default: {getattr(defaults, f.name)}]".split()) in packed, flag
    assert f"in a --config file: {section}: {{option: value}}" in " ".join(result.output.split())


def test_strategies_show_a_combination_lists_both_and_naive_has_none():
    both = CliRunner().invoke(cli, ["strategies", "show", "hat+distill"])
    assert both.exit_code == 0 and "--hat-c" in both.output and "--distill-lam" in both.output
    assert both.output.index("hat (isolation)") < both.output.index("distill (replay)")
    naive = CliRunner().invoke(cli, ["strategies", "show", "naive"])
    assert naive.exit_code == 0 and "No options." in naive.output


@pytest.mark.parametrize(("name", "words"), [("nieve", "did you mean 'naive'?"),
                                             ("ewc+si", "both quadratic strategies")])
def test_strategies_show_refuses_a_bad_name_with_exit_2_and_one_line(name, words):
    result = CliRunner().invoke(cli, ["strategies", "show", name])
    assert result.exit_code == 2 and "Traceback" not in result.output
    (error,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert words in error
