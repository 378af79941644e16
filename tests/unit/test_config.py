"""Config: defaults, YAML files, overrides and validation errors."""

from __future__ import annotations

import pytest

from wpl_nas.config import SearchConfig, WPLOptions, load_config
from wpl_nas.errors import ConfigError


def test_defaults_are_valid_and_name_the_run():
    config = SearchConfig().validate()
    assert (config.space, config.dataset, config.strategy, config.sampler) == ("mnist1d", "mnist1d", "wpl", "auto")
    assert config.resolved_sampler == "tpe" and config.objective_list == ["accuracy"]
    assert config.replace(objectives="accuracy,params").resolved_sampler == "nsga2"
    assert config.resolved_study_name == "mnist1d-wpl"
    assert config.resolved_storage == "sqlite:///runs/mnist1d-wpl/study.db"


def test_yaml_round_trip(tmp_path):
    config = SearchConfig(trials=7, lr=0.1, wpl=WPLOptions(alpha=3.0, accumulate="max"))
    path = tmp_path / "c.yaml"
    config.dump(path, extra={"command": ["wpl-nas", "search"]})
    text = path.read_text()
    assert "command" in text
    path.write_text(text.replace("command:\n- wpl-nas\n- search\n", ""))
    assert load_config(path) == config


def test_partial_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trials: 3\nwpl:\n  alpha: 5\n")
    config = load_config(path)
    assert config.trials == 3 and config.wpl.alpha == 5.0 and config.wpl.form == "proximal"
    overridden = config.replace(trials=9, wpl={"form": "gradient"})
    assert overridden.trials == 9 and overridden.wpl.alpha == 5.0 and overridden.wpl.form == "gradient"


@pytest.mark.parametrize(("text", "expected"), [
    ("trails: 3\n", "unknown key 'trails' (did you mean 'trials'?)"),
    ("wpl:\n  alpah: 3\n", "unknown key 'alpah'"),
    ("trials: three\n", "key 'trials' must be of type int"),
    ("download: 1\n", "key 'download' must be of type bool"),
    ("wpl: 3\n", "key 'wpl' must be a mapping"),
    ("- a\n- b\n", "must be a mapping"),
    ("trials: [1\n", "malformed YAML"),
])
def test_bad_files_name_the_file_and_key(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert expected in str(info.value)
    assert str(path) in str(info.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config("no/such/file.yaml")


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"trials": 0}, "trials must be > 0, but got trials=0"),
    ({"lr": -1.0}, "lr must be >= 0"),
    ({"val_fraction": 1.0}, "val_fraction must be in (0, 1)"),
    ({"wpl": {"form": "implicit"}}, "unknown wpl.form 'implicit'; valid choices: proximal, gradient"),
    ({"wpl": {"accumulate": "avg"}}, "valid choices: sum, decay, max"),
    ({"wpl": {"fisher_batches": 0}}, "fisher_batches must be > 0"),
])
def test_bad_values(overrides, expected):
    with pytest.raises(ConfigError) as info:
        SearchConfig().replace(**overrides).validate()
    assert expected in str(info.value)
