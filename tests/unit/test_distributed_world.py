"""The process world of a data-parallel search: torchrun's environment, the collective timeout, batch
slices, and, in a real 2-process gloo group, batch norm on global statistics, the summed path
gradients, the timeout in force, the ranks' leaving their group together and the scores they take
together on shares of the evaluation batches."""

from __future__ import annotations

import itertools
import os
import random
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import wpl_nas
from wpl_nas.distributed import DEFAULT_TIMEOUT, TIMEOUT_ENV, BatchNorm1d, BatchNorm2d, World, join, leave
from wpl_nas.errors import ConfigError
from wpl_nas.ops import batch_norm


def test_without_torchrun_the_world_is_one_process():
    world = World.from_env({})
    assert (world.rank, world.size, world.local_rank) == (0, 1, 0)
    assert not world.distributed and world.leader
    assert world.share("message") == "message"  # no process group needed
    assert world.bounds(10) == (0, 10)


def test_the_world_is_read_from_torchruns_environment():
    world = World.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (world.rank, world.size, world.local_rank) == (3, 4, 1)
    assert world.distributed and not world.leader


@pytest.mark.parametrize("env", [{"WORLD_SIZE": "two"}, {"RANK": "2", "WORLD_SIZE": "2"}, {"WORLD_SIZE": "0"}])
def test_a_bad_environment_is_a_config_error_naming_it(env):
    with pytest.raises(ConfigError, match=r"RANK|WORLD_SIZE"):
        World.from_env(env)


def test_the_collective_timeout_is_generous_and_read_from_the_environment():
    assert World.from_env({}).timeout == DEFAULT_TIMEOUT >= 3600  # torch's default: 30 min (gloo), 10 (NCCL)
    world = World.from_env({"RANK": "1", "WORLD_SIZE": "2", TIMEOUT_ENV: "5400.5"})
    assert world.timeout == 5400.5 and world.rank == 1


@pytest.mark.parametrize("text", ["0", "-60", "0.5", "nan", "inf", "-inf", "1e20", "2h", ""])
def test_a_bad_timeout_is_a_config_error_naming_it(text):
    with pytest.raises(ConfigError, match=TIMEOUT_ENV) as caught:
        World.from_env({"WORLD_SIZE": "2", TIMEOUT_ENV: text})
    assert repr(text) in str(caught.value) and ">= 1" in str(caught.value)
    with pytest.raises(ConfigError, match=TIMEOUT_ENV):  # a single process refuses it too
        World.from_env({TIMEOUT_ENV: text})


def test_the_cli_refuses_a_bad_timeout_with_exit_code_2_before_writing(tmp_path):
    from click.testing import CliRunner

    from wpl_nas.cli import cli

    result = CliRunner().invoke(cli, ["search", "--runs-dir", str(tmp_path / "runs"), "--no-progress"],
                                env={TIMEOUT_ENV: "-1"})
    assert result.exit_code == 2 and "WPL_NAS_DIST_TIMEOUT='-1'" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("n", [0, 1, 2, 7, 64])
@pytest.mark.parametrize("size", [2, 3])
def test_the_slices_of_a_batch_cover_it_in_rank_order(n, size):
    slices = [World(rank=r, size=size).bounds(n) for r in range(size)]
    assert slices[0][0] == 0 and slices[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(slices))
    sizes = [stop - start for start, stop in slices]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("dims", [1, 2])
def test_batch_norm_outside_a_data_parallel_step_is_torchs_exactly(dims):
    torch.manual_seed(0)
    ours = batch_norm(dims, 4)
    assert isinstance(ours, BatchNorm1d if dims == 1 else BatchNorm2d)
    plain = (nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d)(4, affine=True, track_running_stats=False)
    plain.load_state_dict(ours.state_dict())  # same keys: old checkpoints load
    x = torch.randn(5, 4, *([6] * dims))
    assert torch.equal(ours(x), plain(x))
    with World().global_batch_norm():  # a single process: nothing changes
        assert torch.equal(ours(x), plain(x))


@pytest.mark.parametrize(("n", "batch_size"), [(0, 8), (5, 8), (37, 8), (64, 8), (37, 1)])
@pytest.mark.parametrize("size", [2, 3])
def test_the_ranks_shares_of_the_evaluation_batches_are_one_processs_batches(n, batch_size, size):
    shares = [list(World(rank=r, size=size).batch_starts(n, batch_size=batch_size)) for r in range(size)]
    assert [start for share in shares for start in share] == list(range(0, n, batch_size))  # in rank order
    counts = [len(share) for share in shares]
    assert max(counts) - min(counts) <= 1
    assert World().batch_starts(n, batch_size=batch_size) == range(0, n, batch_size)


# --- a real 2-process gloo group -------------------------------------------------------------

def _in_group(rank: int, store: str, check: str, *args: object) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        globals()[check](World(rank=rank, size=2), *args)
    finally:
        leave()  # a check may have ended the group already


def _spawn(tmp_path: Path, check: str, *args: object) -> None:
    mp.spawn(_in_group, args=(str(tmp_path / "store"), check, *args), nprocs=2, join=True)


def _check_batch_norm(world: World, dims: int, n: int) -> None:
    torch.manual_seed(0)
    bn = batch_norm(dims, 3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    x = (torch.randn(n, 3, *([5] * dims)) * 3 + 2).requires_grad_(True)
    target = torch.randn(n, 3, *([5] * dims))
    # The whole batch in one process: nn.BatchNorm's own batch statistics.
    whole = ((bn(x) - target) ** 2).sum()
    gx, gw, gb = torch.autograd.grad(whole, [x, bn.weight, bn.bias])
    # This rank's slice, normalised with the global batch's statistics; gradients summed over ranks.
    start, stop = world.bounds(n)
    part = x[start:stop].detach().requires_grad_(True)
    with world.global_batch_norm():
        out = bn(part)
    assert torch.allclose(out, bn(x)[start:stop], atol=1e-5)
    ((out - target[start:stop]) ** 2).sum().backward()
    assert part.grad is not None and bn.weight.grad is not None and bn.bias.grad is not None
    assert torch.allclose(part.grad, gx[start:stop], atol=1e-4)
    world.all_reduce_gradients([bn.weight, bn.bias])
    assert torch.allclose(bn.weight.grad, gw, atol=1e-4) and torch.allclose(bn.bias.grad, gb, atol=1e-4)
    assert not torch.allclose(gw, torch.zeros_like(gw))  # the check means something


@pytest.mark.parametrize(("dims", "n"), [(1, 8), (2, 7)])
def test_batch_norm_in_a_data_parallel_step_equals_the_whole_batchs(tmp_path, dims, n):
    _spawn(tmp_path, "_check_batch_norm", dims, n)


def _check_path_gradients(world: World, space_file: str, data_dir: str, n: int) -> None:
    data = wpl_nas.load_dataset("mnist1d", data_dir=data_dir)
    space = wpl_nas.load_space(space_file)
    net = wpl_nas.build_supernet(space, data, seed=0)
    arch = wpl_nas.Architecture.parse("|conv_5~0|+|skip_connect~0|none~1|+|conv_5~0|none~1|conv_5~2|")
    net.set_arch(arch)
    net.train()
    x, y = data.train.tensors[0][:n], data.train.tensors[1][:n]  # type: ignore[attr-defined]
    params = list(net.parameters())
    whole = dict(zip(params, torch.autograd.grad(F.cross_entropy(net(x), y), params, allow_unused=True),
                     strict=True))
    start, stop = world.bounds(n)
    with world.global_batch_norm():
        loss = F.cross_entropy(net(x[start:stop]), y[start:stop], reduction="sum") / n
    loss.backward()
    path = list(net.parameters_of(arch).values())
    world.all_reduce_gradients(path)
    scale = max(g.abs().max() for g in whole.values() if g is not None)
    for p in params:
        if whole[p] is None:  # off the path: still no gradient, so SGD leaves it and its momentum
            assert p.grad is None
        else:
            assert p.grad is not None and (p.grad - whole[p]).abs().max() <= 1e-4 * scale
    assert sum(whole[p] is None for p in params) > 0 and sum(whole[p] is not None for p in params) > 0


@pytest.mark.parametrize("n", [9, 1])  # 1: rank 0's slice is empty
def test_summed_path_gradients_equal_the_whole_batchs(tmp_path, tiny_space_file, mnist1d, data_dir, n):
    _spawn(tmp_path, "_check_path_gradients", str(tiny_space_file), str(data_dir), n)


def test_one_thread_per_core_is_shared_among_torchruns_processes(monkeypatch):
    from wpl_nas.threads import cores, use_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        assert use_threads(0) == max(1, cores() // 2)
        assert use_threads(3) == 3  # an explicit count is taken as given
        monkeypatch.delenv("LOCAL_WORLD_SIZE")
        assert use_threads(0) == cores()
    finally:
        torch.set_num_threads(before)


def test_under_torchrun_a_gpu_index_is_refused_before_any_group_starts():
    with pytest.raises(ConfigError, match="cuda:1"):
        join(World(rank=0, size=2), torch.device("cuda:1"))
    assert not dist.is_initialized()


def _joined(rank: int, port: int, joining: Any, timed_out: Any) -> None:
    """Rank ``rank`` of a group started by :func:`join` from torchrun's environment: rank 1, with a 1 s
    timeout, waits for a message rank 0 never sends, and must give up; rank 0 waits until it has."""
    # As under torchrun, the ranks are clients of a store the launcher serves on ``port``.
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), TORCHELASTIC_USE_AGENT_STORE="True")
    # The timeout bounds the ranks' wait for each other in the rendezvous too: only rank 1 has the
    # short one, and it joins once rank 0 is joining, not a process start-up (seconds on a busy
    # machine) behind it. Every process reads its own timeout.
    timeout = "1" if rank == 1 else str(DEFAULT_TIMEOUT)
    world = World.from_env({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), TIMEOUT_ENV: timeout})
    if rank == 0:
        joining.set()
    else:
        assert joining.wait(120)
    join(world, torch.device("cpu"))
    try:
        if rank == 1:
            with pytest.raises(RuntimeError, match="1000ms"):  # gloo names the timeout in force
                world.share()
            timed_out.set()
        else:
            # Not a measurement: rank 1's 1 s timeout has long passed when this gives up (had the value
            # not reached the group, rank 1 would wait torch's 30 min instead).
            assert timed_out.wait(120), "rank 1 did not time out: the timeout did not reach the process group"
    finally:
        leave()


def test_the_timeout_reaches_the_process_group():
    # This process serves the rendezvous store, as torchrun's agent does, on a port it binds at once
    # (port 0): a free port probed then bound by the ranks could be taken in between by another
    # suite running on the same machine.
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    context = mp.get_context("spawn")
    mp.spawn(_joined, args=(store.port, context.Event(), context.Event()), nprocs=2, join=True)


def _check_leave_together(world: World, started: Any, left: Any, arrived: Any) -> None:
    """Rank 0 comes to leave first, rank 1 only once rank 0 has left or 2 s have passed: rank 0 may
    not end its group before rank 1 has come (without the barrier it would end it at once)."""
    if world.leader:
        started.set()
        leave(world)
        came = arrived.is_set()
        left.set()
        assert came, "rank 0 ended its group before rank 1 had come to leave"
    else:
        assert started.wait(120)
        left.wait(2)  # not a measurement: any wait that ends shows a rank 0 that did not wait
        arrived.set()
        leave(world)
    assert not dist.is_initialized()
    leave(world)  # the group is gone: nothing more to do, on any rank


def test_the_ranks_of_a_search_leave_their_group_together(tmp_path):
    context = mp.get_context("spawn")
    _spawn(tmp_path, "_check_leave_together", context.Event(), context.Event(), context.Event())


def _check_divide(world: World, n: int) -> None:
    scored: list[int] = []

    def score(item: int) -> float:
        scored.append(item)
        return item / 3 if item % 2 else -item / 7  # not exact in binary: each gathered
        # value must be the scoring rank's float, bit for bit

    divided = world.divide(list(range(n)), score)
    mine = list(scored)
    assert divided == [score(i) for i in range(n)]
    assert mine == list(range(*world.bounds(n)))  # this rank scored its share only...
    count = torch.tensor([len(mine)])
    assert int(world.all_reduce_(count)) == n  # ...and the shares cover the items once


@pytest.mark.parametrize("n", [0, 1, 5])  # 1: rank 0 scores nothing
def test_divided_scores_are_each_ranks_share_gathered_exactly(tmp_path, n):
    _spawn(tmp_path, "_check_divide", n)


def _check_divided_scores(world: World, space_file: str, data_dir: str) -> None:
    from wpl_nas.evaluation import accuracy, perplexity

    data = wpl_nas.load_dataset("mnist1d", data_dir=data_dir)
    net = wpl_nas.build_supernet(wpl_nas.load_space(space_file), data, seed=0)
    arch = wpl_nas.Architecture.parse("|conv_5~0|+|skip_connect~0|none~1|+|conv_5~0|none~1|conv_5~2|")
    seen: list[int] = []
    net.register_forward_pre_hook(lambda module, inputs: seen.append(len(inputs[0])))
    x, y = data.train.tensors  # type: ignore[attr-defined]
    # 37: neither a multiple of the batch nor of the ranks; 5: one batch, so rank 0 scores none.
    for n, batch_size in ((37, 8), (5, 8), (64, 16)):
        whole_acc = accuracy(net, arch, x[:n], y[:n], batch_size=batch_size)
        # Perplexity's float64 sums over a classifier's logits (B, classes): the same code path.
        whole_ppl = perplexity(net, arch, x[:n], y[:n], batch_size=batch_size)
        seen.clear()
        acc = accuracy(net, arch, x[:n], y[:n], batch_size=batch_size, world=world)
        mine = list(seen)
        ppl = perplexity(net, arch, x[:n], y[:n], batch_size=batch_size, world=world)
        assert acc == whole_acc, (n, batch_size)  # an integer count of correct predictions: exact
        assert abs(ppl - whole_ppl) <= 1e-12 * whole_ppl, (n, batch_size)
        # This rank took its own batches only, the batches of one process...
        starts = world.batch_starts(n, batch_size=batch_size)
        assert mine == [min(batch_size, n - start) for start in starts], (n, batch_size)
        samples = torch.tensor([sum(mine)])
        assert int(world.all_reduce_(samples)) == n  # ...and the ranks' batches cover the set once
        if n == 5:
            assert mine == ([] if world.leader else [5])
    assert 0 < whole_acc < 1 and whole_ppl > 1  # the scores are not degenerate


def test_divided_evaluation_batches_give_one_processs_scores(tmp_path, tiny_space_file, mnist1d, data_dir):
    _spawn(tmp_path, "_check_divided_scores", str(tiny_space_file), str(data_dir))


def _check_divided_perplexity(world: World, space_file: str, data_dir: str) -> None:
    from wpl_nas.evaluation import perplexity

    data = wpl_nas.load_dataset("ptb", data_dir=data_dir)
    space = wpl_nas.load_space(space_file)
    net = wpl_nas.build_supernet(space, data, seed=0)
    arch = space.sample(random.Random(0))
    x, y = data.train.tensors  # type: ignore[attr-defined]  # token windows (N, T), next tokens (N, T)
    assert len(y) >= 11 and y.dim() == 2
    for n, batch_size in ((11, 4), (3, 4)):  # 3 batches of 4, 4, 3; one batch, which rank 0 goes without
        whole = perplexity(net, arch, x[:n], y[:n], batch_size=batch_size)
        divided = perplexity(net, arch, x[:n], y[:n], batch_size=batch_size, world=world)
        assert abs(divided - whole) <= 1e-12 * whole and whole > 1, (n, batch_size, divided, whole)


def test_divided_evaluation_batches_give_one_processs_perplexity(tmp_path):
    """A recurrent language supernet (logits ``(B, V, T)``) on a corpus in the Penn Treebank layout."""
    corpus = tmp_path / "text" / "ptb"
    corpus.mkdir(parents=True)
    rng = random.Random(0)
    for name in ("train.txt", "valid.txt", "test.txt"):
        lines = [" ".join(rng.choice(["the", "cat", "sat", "on", "a", "mat", "dog", "ran"]) for _ in range(7))
                 for _ in range(60)]
        (corpus / name).write_text("\n".join(f" {line} " for line in lines) + "\n")
    space = tmp_path / "rnn.yaml"
    space.write_text('{"kind": "rnn", "name": "tiny-rnn", "cell": {"nodes": 3, "activations": ["tanh", "relu"]}, '
                     '"model": {"embedding": 8, "hidden": 12}}')  # JSON is YAML
    _spawn(tmp_path, "_check_divided_perplexity", str(space), str(tmp_path / "text"))


def test_in_one_process_divide_scores_everything_in_order():
    assert World().divide(["a", "bb", "ccc"], len) == [1.0, 2.0, 3.0]
