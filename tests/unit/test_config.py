"""Config: defaults, YAML files, overrides and validation errors."""

from __future__ import annotations

import pytest

from wpl_nas.config import SearchConfig, load_config, resume_changes
from wpl_nas.configs import Options, opt
from wpl_nas.errors import ConfigError
from wpl_nas.lab import LabConfig
from wpl_nas.strategies import STRATEGIES, WPLOptions


def test_defaults_are_valid_and_name_the_run():
    config = SearchConfig().validate()
    assert (config.space, config.dataset, config.strategy, config.sampler) == ("mnist1d", "mnist1d", "wpl", "auto")
    assert config.resolved_sampler == "tpe" and config.objective_list == ["accuracy"]
    assert config.replace(objectives="accuracy,params").resolved_sampler == "nsga2"
    assert config.resolved_study_name == "mnist1d-wpl"
    assert config.resolved_storage == "sqlite:///runs/mnist1d-wpl/study.db"


def test_yaml_round_trip(tmp_path):
    config = SearchConfig(trials=7, lr=0.1).replace(wpl=WPLOptions(alpha=3.0, accumulate="max"))
    assert config.sections["wpl"] == WPLOptions(alpha=3.0, accumulate="max")
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
    assert config.trials == 3 and config.sections["wpl"].alpha == 5.0 and config.sections["wpl"].form == "proximal"
    overridden = config.replace(trials=9, wpl={"form": "gradient"})
    assert overridden.trials == 9 and overridden.sections["wpl"] == WPLOptions(alpha=5.0, form="gradient")
    assert overridden.strategy_options["wpl"] is overridden.sections["wpl"]  # what create_strategy reads


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


# --- the one engine both configs use ----------------------------------------------------------
# The defaults of every option before the strategies' options moved into their own files: a default
# search must give the numbers it gave, and a run folder written before must resume unchanged.
OLD_DEFAULT_RUN = """\
space: mnist1d
dataset: mnist1d
data_dir: data
download: false
val_fraction: 0.2
train_samples: 0
strategy: wpl
objectives: accuracy
sampler: auto
pruner: none
trials: 24
study_name: null
storage: null
runs_dir: runs
epochs: 2
batch_size: 64
lr: 0.05
momentum: 0.9
weight_decay: 0.0001
grad_clip: 5.0
eval_samples: 0
eval_batch_size: 256
pool_best: 5
pool_recent: 3
final_top_k: 0
choose_by: training
seed: 0
device: auto
threads: 1
wpl: {alpha: 100.0, form: proximal, fisher_batches: 8, fisher_batch_size: 32, per_sample: false, accumulate: sum,
  decay: 0.9, normalize: false, normalize_norm: 10.0, start_trial: 0, alpha_decay: 0.0, alpha_decay_after: 0,
  include_global: true, protect: 0}
ewc: {lam: 5000.0, form: proximal, fisher_batches: 8, fisher_batch_size: 32, per_sample: true, include_global: true}
online_ewc: {lam: 5000.0, gamma: 0.9, form: proximal, fisher_batches: 8, fisher_batch_size: 32, per_sample: true,
  include_global: true}
si: {c: 0.1, xi: 0.1, form: proximal, include_global: true}
mas: {lam: 1.0, alpha: 0.5, batches: 8, batch_size: 32, per_sample: true, form: proximal, include_global: true}
anpyc: {lam: 3.0, batches: 4, batch_size: 100, prune: 0.5, prune_decay: 0.8, prune_min: 0.01, prune_at: 0.5,
  form: proximal, include_global: false}
hat: {c: 0.75, s_max: 400.0, thres_emb: 6.0, thres_cosh: 50.0, protect: 5, include_global: true}
distill: {lam: 1.0, temperature: 2.0, protect: 5, teachers_per_step: 1}
synthetic: {lam: 1.0, temperature: 2.0, protect: 5, per_class: 4, inner_steps: 3, outer_steps: 20, inner_lr: 0.05,
  meta_lr: 0.05, noise: 0.05}
command: [wpl-nas, search]
study: mnist1d-wpl
history: []
"""


def test_a_run_folder_written_before_the_options_moved_loads_equal_and_resumes_unchanged(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(OLD_DEFAULT_RUN)
    saved = load_config(path)
    assert saved == SearchConfig()
    assert resume_changes(saved, SearchConfig(), run_dir=tmp_path) == {}
    assert saved.sections["wpl"].alpha == 100.0  # WPL's default strength, unchanged


@pytest.mark.parametrize("kind", [SearchConfig, LabConfig])
def test_both_configs_hold_one_section_per_registered_strategy_with_options(kind):
    config = kind()
    assert config.sections.keys() == {n.replace("-", "_") for n in STRATEGIES if STRATEGIES.get(n).Options}
    assert dict(config.strategy_options) == {n: config.sections[n.replace("-", "_")] for n in STRATEGIES
                                             if STRATEGIES.get(n).Options}
    assert kind.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("kind", [SearchConfig, LabConfig])
def test_both_configs_dump_and_load_with_the_same_engine(kind, tmp_path):
    config = kind().replace(epochs=3, ewc={"lam": 7})
    path = tmp_path / "c.yaml"
    config.dump(path, extra={"command": ["wpl-nas", "x"]})
    assert kind.load(path) == config and kind.load(path).sections["ewc"].lam == 7.0


def test_the_engine_builds_checks_and_replaces_any_options_dataclass():
    from dataclasses import dataclass

    @dataclass
    class Toy(Options):
        section = "toy"
        positive = ("size",)
        size: int = opt(2, "A size.")
        kind: str = opt("a", "A kind.", choices=("a", "b"))
        rate: float | None = opt(None, "A rate.")

    assert Toy.from_dict({"size": 3, "rate": 1}).replace(kind="b") == Toy(size=3, kind="b", rate=1.0)
    with pytest.raises(ConfigError, match=r"toy: unknown key 'sise' \(did you mean 'size'\?\); valid keys: size"):
        Toy.from_dict({"sise": 3}, where="toy")
    with pytest.raises(ConfigError, match=r"toy\.size must be > 0, but got size=0"):
        Toy(size=0).validate()
    with pytest.raises(ConfigError, match=r"unknown toy\.kind 'c'; valid choices: a, b"):
        Toy(kind="c").validate()
    with pytest.raises(ConfigError, match=r"toy\.rate must be a finite number"):
        Toy(rate=float("nan")).validate()
