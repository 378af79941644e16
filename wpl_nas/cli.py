"""The ``wpl-nas`` command line. It only translates flags into :mod:`wpl_nas.api` calls.

Every ``search`` (``forgetting``) flag is generated from a field of :class:`~wpl_nas.config.SearchConfig`
(:class:`~wpl_nas.lab.LabConfig`) or of a registered strategy's options, so the flags, the YAML
keys and the defaults cannot drift apart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

# Only light modules here: `wpl-nas --help` and a mistyped flag must not wait for torch, optuna or
# matplotlib (seconds; benchmarks/bench_startup.py), so each command imports what it runs.
from wpl_nas.config import CALIBRATION_SAMPLES, CHOOSE_BY, SearchConfig, keep_saved, load_config, resume_changes
from wpl_nas.configs import Config, Options, field_type, read_yaml_mapping, section_name
from wpl_nas.errors import ConfigError, TrainingDiverged, write_refused
from wpl_nas.threads import DEFAULT_THREADS, THREADS_HELP, threads_in_use, threads_line, use_threads

__all__ = ["cli", "main"]

if TYPE_CHECKING:
    from wpl_nas.distributed import World  # imports torch: only where a search runs

_TYPES: dict[type, Any] = {int: click.INT, float: click.FLOAT, str: click.STRING}


def _flag(name: str, f: dataclasses.Field[Any], owner: type, default: Any, *, hidden: bool = False) -> click.Option:
    """A click option for dataclass field ``f`` (default None = "not given on the command line");
    ``hidden``: left out of ``--help`` (a strategy's options: ``wpl-nas strategies show NAME``)."""
    flag = "--" + name.replace("_", "-")
    shown = f"[default: {default}]" if default not in (None, "") else ""
    help_text = f"{f.metadata.get('help', '')} {shown}".strip()
    kind = field_type(owner, f.name)
    if kind is bool:
        return click.Option([f"{flag}/--no-{name.replace('_', '-')}", name], default=None, help=help_text,
                            hidden=hidden)
    return click.Option([flag, name], type=_TYPES[kind], default=None, help=help_text, hidden=hidden)


def _section_flags(section: str, options: type[Options], *, hidden: bool = True) -> list[click.Option]:
    """The flags ``--<section>-<option>`` of one strategy's options."""
    defaults = options()
    return [_flag(f"{section}_{f.name}", f, options, getattr(defaults, f.name), hidden=hidden)
            for f in options.option_fields()]


class _ConfigCommand(click.Command):
    """A command with one flag per option of a :class:`~wpl_nas.configs.Config`: its fields, then every
    registered strategy's options as ``--<section>-<option>`` (left out of ``--help``: ``wpl-nas
    strategies show NAME`` lists them). The strategies' flags are made from the registry when the command
    runs, so a strategy imported after this module has its flags.

    The registry imports every strategy, and so torch (seconds), so it is loaded only for a command line
    with an option the config's own fields do not have (``--wpl-alpha``, or a typo, whose "did you mean"
    then names the strategies' flags too); ``--help`` and a bad value (``--trials abc``) answer without it.
    Once it is loaded (by the command itself, or earlier in the process), the flags are always there.

    Args:
        config: The config class whose options the command takes, or a function that imports and returns
            it (a class whose package is heavy: ``wpl_nas.lab`` imports torch).
        lazy_help: A function that makes the help text, called when ``--help`` shows it (the
            ``forgetting`` help lists the scenarios, whose module imports torch); give ``short_help`` too.
    """

    def __init__(self, *args: Any, config: type[Config] | Callable[[], type[Config]],
                 lazy_help: Callable[[], str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._config = config
        self._lazy_help = lazy_help
        self._own_flags: list[click.Option] | None = None  # one per field of the config
        self._made_for: dict[str, type[Options]] | None = None  # the sections the flags below were made for
        self._section_flags: list[click.Option] = []

    @property
    def config(self) -> type[Config]:
        return self._config if isinstance(self._config, type) else self._config()

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if self._own_flags is None:
            config = self.config
            # Each field's own default (every option is made with opt(), which gives one): building a
            # config to read them would load the strategies for its sections.
            self._own_flags = [_flag(f.name, f, config, f.default) for f in config.option_fields()]
        sections = self.config.section_types() if Config.strategy_registry is not None else {}
        if sections != self._made_for:  # made once per registry state: click asks several times per call
            self._section_flags = [flag for section, options in sections.items()
                                   for flag in _section_flags(section, options)]
            self._made_for = sections
        help_option = self.get_help_option(ctx)
        return [*self.params, *self._own_flags, *self._section_flags, *([help_option] if help_option else [])]

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if Config.strategy_registry is None:
            known = {name for param in self.get_params(ctx) for name in [*param.opts, *param.secondary_opts]}
            if any(arg.startswith("--") and arg.partition("=")[0] not in known for arg in args):
                self.config.registry()  # loads the strategies: get_params adds their flags from now on
        return super().parse_args(ctx, args)

    def format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        if self._lazy_help is not None:
            self.help = self._lazy_help()
        super().format_help_text(ctx, formatter)


def _overrides(config: type[Config], flags: dict[str, Any]) -> dict[str, Any]:
    """Flags given on the command line, shaped like ``Config.replace`` wants them (sections as partial dicts)."""
    by_flag = {f"{section}_{f.name}": (section, f.name) for section, options in config.section_types().items()
               for f in options.option_fields()}
    out: dict[str, Any] = {}
    for name, value in flags.items():
        if value is None:
            continue
        if name in by_flag:
            section, key = by_flag[name]
            out.setdefault(section, {})[key] = value
        else:
            out[name] = value
    return out


@contextlib.contextmanager
def _usage_errors() -> Iterator[None]:
    """Bad input (a ConfigError) becomes a usage error: its message, exit code 2, no traceback."""
    try:
        yield
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    except Exception as exc:
        refused = write_refused(exc)  # a read-only run folder, a full disk: the user's to fix
        if refused is None:
            raise
        raise click.UsageError(f"{refused}; nothing the run had saved was changed") from None


def _threads_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--threads N`` for a command that trains or scores: applied (``wpl_nas.threads.use_threads``) as
    soon as it is parsed, before the command runs, exactly as ``search`` applies its ``--threads``."""

    def apply(ctx: click.Context, param: click.Parameter, value: int) -> int:
        return use_threads(value)

    return click.option("--threads", type=click.IntRange(min=0), default=DEFAULT_THREADS, metavar="N",
                        expose_value=False, callback=apply,
                        help=f"{THREADS_HELP} [default: {DEFAULT_THREADS}]")(command)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="wpl-nas")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Weight-sharing neural architecture search that does not forget.

    Candidates are trained one after another on one supernet; the weight plasticity loss
    (WPL) keeps later candidates from overwriting what earlier ones learned. Optuna proposes
    the candidates; TensorBoard and optuna-dashboard show how much quality they retain.

    Start with `wpl-nas search` (a small search on MNIST-1D) and `wpl-nas spaces`.
    """
    # Under torchrun (WORLD_SIZE > 1) only a search is data-parallel; any other command would run
    # N times side by side, each writing the same files.
    if ctx.invoked_subcommand not in (None, "search") and os.environ.get("WORLD_SIZE", "1") not in ("", "0", "1"):
        raise click.UsageError(f"`wpl-nas {ctx.invoked_subcommand}` does not run under torchrun "
                               f"(WORLD_SIZE={os.environ['WORLD_SIZE']}); only `wpl-nas search` does: run "
                               f"`wpl-nas {ctx.invoked_subcommand}` as one plain process")


@cli.command(cls=_ConfigCommand, config=SearchConfig)
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="YAML file with any of the options below (flags given here override it).")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar. [default: on]")
def search(config_file: str | None, progress: bool, **flags: Any) -> None:
    """Run (or resume) an architecture search.

    Each Optuna trial trains one candidate architecture on the shared supernet weights, with
    the chosen consolidation strategy, then re-scores a pool of earlier candidates to measure
    forgetting. Outputs go to RUNS_DIR/STUDY_NAME/: config.yaml, study.db, tb/, checkpoints/.
    Running the same command again resumes the study, the supernet and the strategy state;
    a larger --trials extends the study. On resume, options not given keep the run's values;
    the training options of later candidates (--lr, --momentum, --weight-decay, --grad-clip,
    --epochs, --batch-size, a strategy's strength such as --wpl-alpha) may change, and each
    change is recorded in config.yaml; other changes are refused. Ctrl-C or SIGTERM stops it
    cleanly (exit code 130 or 143): the trial in flight is marked FAIL and trained again on resume.

    The strategies' own options (--wpl-alpha, --ewc-lam, ...; `wpl: {alpha: 300}` in a --config
    file) are not listed below: `wpl-nas strategies show NAME` lists those of strategy NAME.
    """
    from wpl_nas.api import run_search  # heavy imports (torch) only when searching
    from wpl_nas.distributed import World, leave
    from wpl_nas.tracking.signals import SearchInterrupted

    command = ["wpl-nas", *sys.argv[1:]]
    threading.excepthook = _quiet_refused_writes  # e.g. TensorBoard's writer thread on a full disk
    try:
        world = World.from_env()
        base = load_config(config_file) if config_file else SearchConfig()
        overrides = _overrides(SearchConfig, flags)
        config = base.replace(**overrides).validate()
        if world.distributed:
            _join(world, config)
            if not world.leader:
                _follow(world)
                return
        config = _resume_options(config, given=_given(overrides, config_file))
        try:
            # The threads line once the search has checked every option (a refused one prints none);
            # the search itself applies config.threads.
            result = run_search(config, progress=progress, command=command, world=world,
                                on_start=lambda: click.echo(threads_line(threads_in_use()), err=True))
        finally:
            leave()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    except TrainingDiverged as exc:
        click.echo(f"\nerror: {exc}", err=True)
        sys.exit(1)
    except SearchInterrupted as exc:
        lost = f"trial {exc.lost_trial} was in flight: marked FAIL, it trains again on resume; " \
            if exc.lost_trial is not None else ""
        saved = f"the checkpoint holds the {exc.finished} finished trial(s); " if exc.finished is not None else ""
        click.echo(f"\ninterrupted by {exc.name}: {lost}{saved}rerun the same command to resume", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("\ninterrupted: rerun the same command to resume (the trial in flight is lost)", err=True)
        sys.exit(130)
    except Exception as exc:
        refused = write_refused(exc)  # e.g. the disk filled up mid-search
        if refused is None:
            raise
        click.echo(f"\nerror: {refused}. The run keeps its last finished trial (every file is written whole or "
                   "not at all): free space or make the folder writable, then rerun the same command to resume",
                   err=True)
        sys.exit(1)
    click.echo("")
    click.echo(result.summary())


def _join(world: World, config: SearchConfig) -> None:
    """Start the process group of a search under torchrun, on the device ``config`` asks for."""
    from wpl_nas.assembly import resolve_device
    from wpl_nas.distributed import join

    join(world, resolve_device(config.device))


def _follow(world: World) -> None:
    """A rank other than 0 of a search under torchrun: it trains what rank 0 says, silently (rank 0
    reports everything, errors included); it exits 1 on a diverged candidate, 130 when interrupted."""
    from wpl_nas.api import follow_search
    from wpl_nas.distributed import leave

    try:
        follow_search(world)
    except TrainingDiverged:
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        leave()


def _quiet_refused_writes(args: threading.ExceptHookArgs) -> None:
    """A background thread's write the file system refused (TensorBoard's event writer on a full
    disk) is left to the search's one-line error, which the same cause raises in the main thread
    soon after; anything else is printed as usual."""
    if args.exc_value is None or write_refused(args.exc_value) is None:
        threading.__excepthook__(args)


def _given(overrides: dict[str, Any], config_file: str | None) -> set[str]:
    """The options (dotted names) given on the command line or in the --config file."""
    layers = [overrides, read_yaml_mapping(config_file) if config_file else {}]
    given = set()
    for layer in layers:
        for key, value in layer.items():
            if key in SearchConfig.section_types() and isinstance(value, dict):
                given |= {f"{key}.{name}" for name in value}
            else:
                given.add(str(key))
    return given


def _resume_options(config: SearchConfig, *, given: set[str]) -> SearchConfig:
    """On an existing run folder: the resumable options not ``given`` keep the run's values (so
    a short resume command does not put defaults back), and the changes left are announced.

    Raises:
        ConfigError: the run's config.yaml cannot be read.
    """
    from wpl_nas.run_folder import RunFolder

    folder = RunFolder(config.run_dir)
    if not folder.is_run():
        return config
    saved = folder.config()
    config = keep_saved(config, saved, given=given).validate()
    try:
        changes = resume_changes(saved, config, run_dir=config.run_dir)
    except ConfigError:  # refused by run_search, after the names are checked: one order of errors
        return config
    shown = {k: v for k, v in changes.items() if k not in SearchConfig.MACHINE_OPTIONS and k != "trials"}
    if shown:
        text = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in shown.items())
        click.echo(f"resuming with changed options for the candidates still to come: {text} "
                   f"(recorded in {folder.config_path})", err=True)
    return config


@cli.group(invoke_without_command=True)
@click.pass_context
def spaces(ctx: click.Context) -> None:
    """List the named search spaces, built in and from installed plugins (or `spaces show NAME` for one)."""
    if ctx.invoked_subcommand is not None:
        return
    from wpl_nas.spaces import load_space, named_spaces

    names = list(named_spaces())
    width = max(len(name) for name in names)
    for name in names:
        space = load_space(name)
        size = f"{space.size:,}" if space.size < 10**9 else f"{space.size:.1e}"  # e.g. 5.8e+22
        click.echo(f"{name:<{width}}  {space.kind:<9} {size:>11} architectures   {space.description}")


@spaces.command("show")
@click.argument("name")
@click.option("--render", type=click.Path(dir_okay=False), help="Also draw the cell DAG to this PNG file.")
def spaces_show(name: str, render: str | None) -> None:
    """Show space NAME (a built-in name or a .yaml path): skeleton, cell DAG, op choices, size."""
    from wpl_nas.spaces import load_space

    if render and not Path(render).parent.is_dir():
        raise click.UsageError(f"--render {render!r}: folder {str(Path(render).parent)!r} does not exist")
    with _usage_errors():
        space = load_space(name)
    click.echo(space.describe())
    if render:
        from wpl_nas.tracking.figures import png_bytes, space_figure

        try:
            Path(render).write_bytes(png_bytes(space_figure(space), dpi=110))
        except OSError as exc:
            raise click.UsageError(f"--render {render!r}: cannot write it ({exc.strerror})") from None
        click.echo(f"cell DAG drawn to {render}")


@cli.group(invoke_without_command=True)
@click.pass_context
def strategies(ctx: click.Context) -> None:
    """List the consolidation strategies (or `strategies show NAME` for one's options)."""
    if ctx.invoked_subcommand is not None:
        return
    from wpl_nas.strategies import STRATEGIES

    names = STRATEGIES.names()
    width = max(len(name) for name in names)
    for name in names:
        cls = STRATEGIES.get(name)
        click.echo(f"{name:<{width}}  {cls.family:<9}  {_first_line(cls.__doc__)}")
    click.echo("\nTwo of different kinds combine with '+' (e.g. hat+distill). `wpl-nas strategies show NAME` lists a "
               "strategy's options.")


@strategies.command("show")
@click.argument("name")
def strategies_show(name: str) -> None:
    """The options of strategy NAME (or of both in A+B), with their defaults: given to `search` and
    `forgetting` as --<strategy>-<option>, or in a --config file as `<strategy>: {<option>: value}`."""
    from wpl_nas.strategies import resolve_strategy

    with _usage_errors():
        classes = resolve_strategy(name)
    formatter = click.HelpFormatter(max_width=110)
    for label, cls in zip((part.strip() for part in name.split("+")), classes, strict=True):
        options = cls.Options
        if formatter.getvalue():
            formatter.write_paragraph()
        formatter.write_text(f"{label} ({cls.family}): {_first_line(cls.__doc__)}")
        if options is None:
            formatter.write_text("No options.")
            continue
        section = section_name(label)
        formatter.write_text(" ".join((options.__doc__ or "").split()))
        with formatter.section(f"Options (in a --config file: {section}: {{option: value}})"):
            formatter.write_dl(_option_help(section, options))
    click.echo(formatter.getvalue().rstrip("\n"))


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().split("\n")[0]


def _option_help(section: str, options: type[Options]) -> list[tuple[str, str]]:
    """The ``--help`` rows of the flags of strategy section ``section``, as ``search`` would show them."""
    ctx = click.Context(click.Command("show"))
    return [record for flag in _section_flags(section, options, hidden=False)
            if (record := flag.get_help_record(ctx)) is not None]


#: The first line of the ``forgetting`` help, and its line in ``wpl-nas --help`` (which makes no other).
_FORGETTING_SUMMARY = "Measure multi-model forgetting, strategy by strategy."


def _forgetting_help() -> str:
    """The help of ``forgetting``, with one paragraph per registered scenario."""
    from wpl_nas.lab import SCENARIOS

    paragraphs = [
        _FORGETTING_SUMMARY,
        "Models are trained one after another on one weight-sharing supernet with each strategy of "
        "--strategies; after each, every earlier model is re-scored, and the first one is probed while the "
        "later ones train. The table (printed at the end) has one row per strategy (per shared depth in "
        "two-model): the first model(s)' accuracy before and after and the lowest probed one, forgetting "
        "(mean, max), HAT's ratio ρ, the last model's accuracy, time per training step and the strategy's "
        "memory, as mean ± std over --seeds.",
        "Scenarios (--scenario):",
        *(f"{name}: {SCENARIOS.get(name).summary}" for name in SCENARIOS.names()),
        "Outputs go to RUNS_DIR/NAME/: config.yaml, results.csv, results.md, seeds.csv, retention.png, "
        "retention/ (retention matrices and curves, JSON), tb/ (TensorBoard). Rerunning the same NAME "
        "replaces them.",
        "The strategies' own options (--wpl-alpha, --ewc-lam, ...) are not listed below: "
        "`wpl-nas strategies show NAME` lists those of strategy NAME.",
        "\b\nExamples:\n"
        "  wpl-nas forgetting --scenario two-model --strategies naive,wpl\n"
        "  wpl-nas forgetting --scenario sequence --space mnist1d --candidates 20 --strategies all\n"
        "  wpl-nas forgetting --scenario split --dataset mnist --data-dir ~/data --tasks 5",
    ]
    return "\n\n".join(paragraphs)


def _lab_config() -> type[Config]:
    from wpl_nas.lab.config import LabConfig  # the lab's package imports torch: only for `forgetting` itself

    return LabConfig


@cli.command(cls=_ConfigCommand, config=_lab_config, lazy_help=_forgetting_help,
             short_help=_FORGETTING_SUMMARY)
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="YAML file with any of the options below (flags given here override it); a run folder's "
                   "config.yaml reruns that run.")
@click.option("--progress/--no-progress", default=True, help="Show progress bars. [default: on]")
def forgetting(config_file: str | None, progress: bool, **flags: Any) -> None:
    from wpl_nas.lab import LabConfig, load_lab_config, run_lab

    try:
        base = load_lab_config(config_file) if config_file else LabConfig()
        config = base.replace(**_overrides(LabConfig, flags)).validate()
        result = run_lab(config, progress=progress, command=["wpl-nas", *sys.argv[1:]])
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    except KeyboardInterrupt:
        click.echo("\ninterrupted: the run folder holds the runs finished so far (retention/, tb/)", err=True)
        sys.exit(130)
    click.echo("")
    click.echo(result.summary())


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--ground-truth", default="standalone", show_default=True,
              help="'standalone' (train each architecture from scratch) or a CSV table keyed by architecture "
                   "string, e.g. NAS-Bench-201's with its ArchitectureString column.")
@click.option("--archs", type=click.IntRange(min=2), metavar="N",
              help="Compare a uniform random subset of N of the distinct complete architectures, drawn with the "
                   "run's seed (a rerun draws the same). [default: all of them]")
@click.option("--seeds", default=2, show_default=True, type=click.IntRange(min=1), metavar="N",
              help="Stand-alone trainings per architecture (seeds: the run's seed, +1, ...); the ground truth is "
                   "their mean, and with 2 or more the noise ceiling (mean τ and ρ between seeds) is reported.")
@click.option("--epochs", type=click.IntRange(min=1), help="Stand-alone training epochs [default: the run's].")
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(min=1), help="k of the top-k overlap.")
@click.option("--key-column", default="ArchitectureString", show_default=True,
              help="The table's architecture-string column.")
@click.option("--column", default="accuracy", show_default=True,
              help="The table's score column (better in the run's direction: higher accuracy, lower perplexity).")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar. [default: on]")
@_threads_option
def rank(run_dir: str, ground_truth: str, archs: int | None, seeds: int, epochs: int | None, top_k: int,
         key_column: str, column: str, progress: bool) -> None:
    """Ranking fidelity of a search: Kendall τ, Spearman ρ, top-k overlap against the ground truth.

    The supernet's scores of RUN_DIR's distinct complete architectures (all, or a random --archs of
    them; at training, and with its final weights) are compared with their stand-alone scores
    (each trained from scratch --seeds times, ground truth the mean) or with a benchmark table.
    With 2 or more seeds each τ and ρ is printed beside its noise ceiling: the mean τ (ρ) between
    two seeds' stand-alone scores, i.e. how well the ground truth agrees with itself. Every
    (architecture, epochs, seed) score is cached in RUN_DIR/rank/standalone.json, so a rerun
    resumes and more seeds or architectures train only what is missing. Writes
    RUN_DIR/rank/ranking.md and ranking.csv (one truth_seed_<seed> column per seed).
    """
    from wpl_nas.fidelity import rank_run

    try:
        with _usage_errors():
            result = rank_run(run_dir, ground_truth=ground_truth, archs=archs, seeds=seeds, epochs=epochs,
                              top_k=top_k, key_column=key_column, column=column, progress=progress)
    except TrainingDiverged as exc:  # a stand-alone training with the run's optimiser settings
        click.echo(f"\nerror: {exc}; the scores trained so far are cached in RUN_DIR/rank/standalone.json",
                   err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("\ninterrupted: the stand-alone scores trained so far are cached in RUN_DIR/rank/standalone.json; "
                   "rerun to resume", err=True)
        sys.exit(130)
    from wpl_nas.tracking.markdown import plain_text

    click.echo(plain_text(result.table))  # the files keep the Markdown
    click.echo(f"\nwritten to {result.out_dir / 'ranking.md'} and ranking.csv")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@_threads_option
def anatomy(run_dir: str) -> None:
    """Where the pool members of a search forget, stage by stage (after Ramasesh et al. 2020).

    For each member: linear CKA between each stage's representation on a fixed probe batch right
    after its training and now, and its accuracy with one stage's weights reset to its snapshot.
    Prints the per-stage table; writes RUN_DIR/anatomy.md and RUN_DIR/anatomy.png. Works while the
    search is still running.
    """
    from wpl_nas.analysis import anatomy_run
    from wpl_nas.tracking.markdown import plain_text

    with _usage_errors():
        result = anatomy_run(run_dir)
    click.echo(plain_text(result.table))  # the file keeps the Markdown
    click.echo(f"\nwritten to {result.plot.with_suffix('.md')} and {result.plot}")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--html", is_flag=True, help="Write one self-contained HTML file instead of Markdown + PNGs.")
def report(run_dir: str, html: bool) -> None:
    """Write a report of a search to RUN_DIR/report/: retained scores over the search, forgetting per
    candidate and after each trial (a heatmap centred on zero: red forgot, blue improved), the ranking
    against the ground truth (after `wpl-nas rank`), the anatomy table (after `wpl-nas anatomy`) and the
    run's configuration, with PNG figures."""
    from wpl_nas.analysis import report_run

    with _usage_errors():
        result = report_run(run_dir, html=html)
    click.echo(f"written to {result.path} ({len(result.figures)} figure(s))")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to serve on (127.0.0.1: this machine only; 0.0.0.0: every interface).")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535), help="Port to serve on.")
def dashboard(run_dir: str, host: str, port: int) -> None:
    """Serve optuna-dashboard on the study of RUN_DIR, with each trial's cell image.

    Each trial shows its architecture, parameter count and score at training (user attributes), its
    cell (an artifact) and a note with its latest re-score and forgetting (rewritten while it is in the
    retained pool; a finished trial's attributes cannot change) above its cell drawn large; the study's
    note holds the retained pool, updated after each trial. Works while the search is running.
    """
    from wpl_nas.run_folder import ARTIFACTS, load_run

    try:
        import optuna_dashboard
    except ImportError:
        raise click.UsageError("optuna-dashboard is not installed; install it with: "
                               "pip install 'wpl-nas[dashboard]'") from None
    from optuna.artifacts import FileSystemArtifactStore

    with _usage_errors():
        run = load_run(run_dir)
    artifacts = Path(run_dir) / ARTIFACTS
    store = FileSystemArtifactStore(str(artifacts)) if artifacts.is_dir() else None
    study_id = run.study._study_id
    click.echo(f"optuna-dashboard for {run.study.study_name}: http://{host}:{port}/dashboard/studies/{study_id}"
               "  (Ctrl+C to stop)")
    optuna_dashboard.run_server(run.optuna_storage, host=host, port=port, artifact_store=store)  # any storage


def _trial_option(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option("--choose-by", type=click.Choice(CHOOSE_BY),
                           help="What the best trial is: final (the best score on the final supernet; "
                                "`wpl-nas select`) or training (the best score at training) [default: the "
                                "run's --choose-by, final unless set].")(command)
    command = click.option("--best", "best", is_flag=True,
                           help="The best complete trial (the default).")(command)
    return click.option("--trial", type=click.IntRange(min=0), help="The trial whose architecture to take.")(command)


@cli.command("select")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--top-k", type=click.IntRange(min=0),
              help="Re-score only the best K candidates by score at training (0: all) [default: the run's].")
@click.option("--show", default=10, show_default=True, type=click.IntRange(min=1), help="Rows to print.")
@_threads_option
def select_command(run_dir: str, top_k: int | None, show: int) -> None:
    """Re-score every candidate on the run's final supernet.

    Weight-sharing NAS often chooses its architecture by scoring the candidates on the final
    supernet, where all are judged by the same weights; a search does this when it ends, and this
    command does it again (e.g. after extending a study in your own script). Writes
    RUN_DIR/final.json and final.csv and the study's user attributes; `export` and `retrain` take
    the best of them when the run chooses by its final score (`--choose-by final`).
    """
    from wpl_nas.evaluation import METRICS
    from wpl_nas.run_folder import FINAL_JSON, load_run
    from wpl_nas.selection import best_at_training, select_run

    with _usage_errors():
        final = select_run(run_dir, top_k=top_k)
        run = load_run(run_dir)
    quality = METRICS.get(final.metric).quality
    ranked = sorted(final.rows, key=lambda r: (-quality(r["final"]), r["trial"]))
    m = final.measures()
    click.echo(f"{len(final.rows)} candidates re-scored on the supernet after trial {final.after_trial} "
               f"({final.metric}); forgetting mean {m['forgetting_mean']:+.4f}, max {m['forgetting_max']:+.4f}; "
               f"rank stability τ {m['stability_tau']:+.3f}")
    click.echo(f"{'trial':>6}  {'final':>8}  {'training':>8}  architecture")
    for r in ranked[:show]:
        click.echo(f"{r['trial']:>6}  {r['final']:>8.4f}  {r['at_training']:>8.4f}  {r['arch']}")
    best, written = ranked[0]["trial"], Path(run_dir) / FINAL_JSON
    by_training = best_at_training(run.study)
    if run.config.choose_by == "final" or by_training is None:
        click.echo(f"chosen: trial {best} (the run chooses by the final score; written to {written})")
    else:
        click.echo(f"best on the final supernet: trial {best} (written to {written}); the run chooses by the score "
                   f"at training: trial {by_training.number}. `export --choose-by final` takes trial {best}")


@cli.command("export")
@click.argument("run_dir", type=click.Path(file_okay=False))
@_trial_option
@_threads_option
@click.option("--calibration-samples", default=CALIBRATION_SAMPLES, show_default=True, type=click.IntRange(min=1),
              help="Training samples on which to recalibrate batch norm's running statistics, so the model "
                   "answers any batch size, one sample included (all of them if the training split is smaller).")
def export_command(run_dir: str, trial: int | None, best: bool, choose_by: str | None,
                   calibration_samples: int) -> None:
    """Export a trial's architecture with the supernet's weights as a stand-alone PyTorch model.

    Writes RUN_DIR/export/trial_NNNN/: model.pt2 (load it with torch alone:
    torch.export.load(path).module()), weights.pt (its state_dict) and arch.json. Batch norm,
    which uses each batch's statistics in the supernet, is given running statistics estimated
    on the run's training split, so the model's answer for a sample does not depend on its batch.
    """
    from wpl_nas.export import export_run

    if best and trial is not None:
        raise click.UsageError("give --trial N or --best, not both")
    with _usage_errors():
        result = export_run(run_dir, trial=trial, choose_by=choose_by, calibration_samples=calibration_samples)
    bn = result.batch_norm
    recalibrated = (f"batch norm ({bn['layers']} layers) recalibrated on {bn['calibration_samples']} training samples"
                    if bn.get("recalibrated") else "no batch norm to recalibrate")
    click.echo(f"trial {result.trial}: {result.arch}\n{recalibrated}\n"
               f"score with the exported weights {result.score:.4f} (the supernet's on this path "
               f"{result.supernet_score:.4f})\nwritten to {result.folder} (model.pt2, weights.pt, arch.json)")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@_trial_option
@click.option("--epochs", default=30, show_default=True, type=click.IntRange(min=1), help="Training epochs.")
@click.option("--restart", is_flag=True,
              help="Start the retraining over (e.g. with other --epochs): its folder RUN_DIR/retrain/trial_NNNN/ "
                   "is emptied first. Without it, a rerun resumes, and other --epochs are refused.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar. [default: on]")
@_threads_option
def retrain(run_dir: str, trial: int | None, best: bool, choose_by: str | None, epochs: int, restart: bool,
            progress: bool) -> None:
    """Train a trial's architecture from scratch with its data set's standard recipe.

    SGD with Nesterov momentum and a cosine schedule (CIFAR: random crops and flips); the
    validation split is scored after each epoch, the test split once at the end. Checkpoints
    after every epoch to RUN_DIR/retrain/trial_NNNN/ (rerun to resume; --restart starts over)
    with TensorBoard events.
    """
    from wpl_nas.retrain import retrain_run

    if best and trial is not None:
        raise click.UsageError("give --trial N or --best, not both")
    try:
        result = retrain_run(run_dir, trial=trial, epochs=epochs, progress=progress, choose_by=choose_by,
                             restart=restart)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    except KeyboardInterrupt:
        again = "the same command without --restart" if restart else "the same command"
        click.echo(f"\ninterrupted: rerun {again} to resume from the last epoch", err=True)
        sys.exit(130)
    click.echo(f"trial {result.trial}: {result.arch}\nvalidation {result.metric} {result.val_scores[-1]:.4f}, "
               f"test {result.metric} {result.test_score:.4f} after {len(result.val_scores)} epochs\n"
               f"written to {result.folder}")


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="wpl-nas")
