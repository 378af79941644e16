"""From a search to a trained model: ``wpl-nas retrain`` trains an architecture from scratch.

::

    from wpl_nas.retrain import retrain_run
    result = retrain_run("runs/mnist1d-wpl", epochs=30)     # the best trial; or trial=7
    print(result.test_score)

A standard recipe per data set (:data:`RECIPES`): SGD with Nesterov momentum, a cosine learning
rate schedule stepped every batch, weight decay, and for CIFAR the usual augmentation (4-pixel
zero padding with a random 32x32 crop, and random horizontal flips). The network is fresh (seeded
by the run's seed), the training split is the search's (the validation split stays held out and
is scored after every epoch), and the **test split is touched only here**, once, at the end.

``RUN_DIR/retrain/trial_NNNN/`` holds ``checkpoint.pt`` (written atomically after every epoch:
model, optimiser, schedule, RNG states, history; rerunning the same command resumes from it, and
``restart=True`` (``--restart``) starts it over, e.g. with other epochs),
``tb/`` (``train/loss``, ``train/lr``, ``val/<metric>`` per epoch, ``test/<metric>`` at the end) and
``result.json``. The metric is the data set's: accuracy, or perplexity for language data (whose
recipe is plain SGD with gradient clipping, the ENAS/WPL setting).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from wpl_nas.assembly import assemble, build_supernet, resolve_device
from wpl_nas.data import RECIPES, Recipe, load_dataset, recipe_for
from wpl_nas.data._bundle import take
from wpl_nas.errors import ConfigError
from wpl_nas.evaluation import METRICS
from wpl_nas.export import choose_trial
from wpl_nas.run_folder import RETRAIN_DIR, load_run
from wpl_nas.spaces import Architecture, load_space
from wpl_nas.tracking import capture_rng, load_checkpoint, restore_rng, save_checkpoint, write_text_atomically
from wpl_nas.training.augment import augment_crop_flip

__all__ = ["RECIPES", "Recipe", "RetrainResult", "augment_crop_flip", "retrain_run"]


@dataclass
class RetrainResult:
    """What :func:`retrain_run` returns.

    Attributes:
        folder: ``RUN_DIR/retrain/trial_NNNN``.
        trial: The trial whose architecture was trained.
        arch: The architecture.
        test_score: The metric on the test split after the last epoch.
        val_scores: The metric on the validation split after each epoch.
        train_loss: Mean training loss of each epoch.
        metric: The metric's name: ``accuracy``, or ``perplexity`` for language data.
    """

    folder: Path
    trial: int
    arch: Architecture
    test_score: float
    val_scores: list[float]
    train_loss: list[float]
    metric: str = "accuracy"


def retrain_run(run_dir: str | Path, *, trial: int | None = None, epochs: int = 30, progress: bool = True,
                on_epoch: Callable[[int, dict[str, float]], None] | None = None,
                choose_by: str | None = None, restart: bool = False) -> RetrainResult:
    """Train a trial's architecture from scratch with its data set's recipe (see the module docstring).

    Args:
        run_dir: A search's run folder.
        trial: The trial number [default: the best complete trial].
        epochs: Training epochs (the cosine schedule spans them).
        progress: Show a progress bar.
        on_epoch: Called after each epoch (and its checkpoint) with the epoch and its measures.
        choose_by: What "best" means when ``trial`` is None (see :func:`wpl_nas.export.choose_trial`)
            [default: the run's ``choose_by``].
        restart: Start over: the trial's retraining folder (checkpoint, TensorBoard events, result)
            is deleted first, once every option is checked. Without it, an existing checkpoint is
            resumed, and one made for another number of epochs is refused.

    Raises:
        ConfigError: not a run folder, no such trial, a data set without a recipe, a bad
            ``epochs``, or (without ``restart``) a checkpoint made for another number of epochs or
            that does not fit the network.
    """
    if epochs < 1:
        raise ConfigError(f"epochs must be >= 1, but got epochs={epochs}")
    run = load_run(run_dir)
    config = run.config
    recipe = recipe_for(config.dataset)
    chosen = choose_trial(run, trial, by=choose_by)
    space = load_space(config.space)
    arch = space.parse(chosen.user_attrs["arch"])
    device = resolve_device(config.device)
    data = load_dataset(config.dataset, data_dir=config.data_dir, download=config.download,
                        val_fraction=config.val_fraction, seed=config.seed, image_size=config.image_size,
                        statistics=run.folder.statistics())
    train, test = data.train, data.test

    folder = run.folder.trial_dir(RETRAIN_DIR, chosen.number)
    # The search's trainer, with the recipe's optimiser and batches and a naive strategy.
    # The recipe's augmentation is for images: a recipe registered for other data trains without it.
    options = {**asdict(recipe), "augment": recipe.augment and len(data.input_shape) == 3}
    parts = assemble(build_supernet(space, data, seed=config.seed).standalone(arch),
                     SimpleNamespace(**options, eval_batch_size=config.eval_batch_size, workers=config.workers),
                     device=device, nesterov=recipe.momentum > 0)
    net, optimizer = parts.supernet, parts.optimizer
    trainer = parts.trainer_for(data, epochs=epochs, seed=config.seed)
    metric = METRICS.get(data.metric)
    short = metric.short
    val_key = f"val_{short}"
    steps_per_epoch = math.ceil(len(train) / recipe.batch_size)  # type: ignore[arg-type]
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    history: dict[str, list[float]] = {"train_loss": [], val_key: []}
    start = 0
    path = folder / "checkpoint.pt"
    gen = torch.Generator().manual_seed(config.seed * 1_000_003 + 7)  # data order and augmentation
    if restart and folder.exists():
        shutil.rmtree(folder)  # the run before: its checkpoint, TensorBoard events and result
    if path.is_file():
        state = load_checkpoint(path, map_location=device, what="retraining checkpoint", required=(
            "model", "optimizer", "schedule", "epoch", "epochs", "history", "rng", "generator"))
        if state["epochs"] != epochs:
            raise ConfigError(f"{path} is a retraining of {state['epochs']} epochs, not {epochs}; rerun with "
                              f"--epochs {state['epochs']} to resume it, or add --restart to start it over with "
                              f"{epochs} epochs")
        try:
            net.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            history, start = dict(state["history"]), int(state["epoch"])
            gen.set_state(state["generator"].cpu())
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
            raise ConfigError(f"retraining checkpoint {path} does not fit trial {chosen.number}'s network ({exc}); "
                              "add --restart to start the retraining over") from None
        restore_rng(state["rng"])
    writer = SummaryWriter(log_dir=str(folder / "tb"))
    bar = tqdm(total=epochs * steps_per_epoch, initial=start * steps_per_epoch, disable=not progress,
               desc=f"retrain trial {chosen.number}", unit="step", dynamic_ncols=True)
    ctx = trainer.context(arch, 0)
    try:
        for epoch in range(start, epochs):
            net.train()
            ctx.epoch = epoch
            loss, _ = trainer.run_epoch(ctx, gen, progress=bar.update, after_step=schedule.step)
            history["train_loss"].append(loss)
            history[val_key].append(trainer.score(arch))
            for tag, key in (("train/loss", "train_loss"), (f"val/{short}", val_key)):
                writer.add_scalar(tag, history[key][-1], epoch)
            writer.add_scalar("train/lr", schedule.get_last_lr()[0], epoch)
            writer.flush()
            save_checkpoint(path, {"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                                   "schedule": schedule.state_dict(), "epoch": epoch + 1, "epochs": epochs,
                                   "history": history, "rng": capture_rng(), "generator": gen.get_state(),
                                   "recipe": asdict(recipe), "arch": str(arch)})
            if on_epoch is not None:
                on_epoch(epoch, {"train_loss": history["train_loss"][-1], val_key: history[val_key][-1]})
        test_x, test_y = take(test, torch.arange(len(test)), device=device)  # type: ignore[arg-type]
        test_score = metric.compute(net, arch, test_x, test_y, batch_size=config.eval_batch_size)  # the only test use
        writer.add_scalar(f"test/{short}", test_score, epochs)
    finally:
        bar.close()
        writer.close()
    result: dict[str, Any] = {"trial": chosen.number, "arch": str(arch), "epochs": epochs, "recipe": asdict(recipe),
                              "metric": metric.name, f"test_{metric.name}": test_score,
                              f"val_{metric.name}": history[val_key],
                              "train_loss": history["train_loss"], "params": sum(p.numel() for p in net.parameters())}
    write_text_atomically(folder / "result.json", json.dumps(result, indent=1))
    return RetrainResult(folder, chosen.number, arch, test_score, history[val_key], history["train_loss"], metric.name)
