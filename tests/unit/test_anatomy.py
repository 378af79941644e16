"""Linear CKA and the per-stage probes of the anatomy of forgetting."""

from __future__ import annotations

import math

import pytest
import torch

import wpl_nas
from wpl_nas.evaluation.anatomy import linear_cka, reset_stage, stage_features, stage_names, stage_of


def reference_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """CKA by its definition with the centring matrix H (HSIC of linear kernels)."""
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    kx, ky = x.double() @ x.double().T, y.double() @ y.double().T
    hsic = lambda a, b: torch.trace(a @ h @ b @ h)  # noqa: E731
    return float(hsic(kx, ky) / torch.sqrt(hsic(kx, kx) * hsic(ky, ky)))


def test_linear_cka_matches_its_definition_and_invariances():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(20, 5, generator=gen)
    y = torch.randn(20, 7, generator=gen)
    wide = torch.randn(20, 50, generator=gen)  # n < d: the Gram form
    assert linear_cka(x, y) == pytest.approx(reference_cka(x, y))
    assert linear_cka(x, wide) == pytest.approx(reference_cka(x, wide))
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=gen))
    assert linear_cka(x, 3.0 * x @ q + 1.0) == pytest.approx(1.0)  # rotation, scale, shift
    assert 0.0 <= linear_cka(x, y) < 0.9
    assert math.isnan(linear_cka(x, torch.ones(20, 3)))
    with pytest.raises(ValueError, match="20 and 19"):
        linear_cka(x, y[:19])


def test_stages_features_and_reset(tiny_space, mnist1d):
    net = wpl_nas.build_supernet(tiny_space, mnist1d)
    names = stage_names(net)
    assert names == ["stem", "stage1", "stage2", "logits"]
    assert stage_of("stem.0.weight") == "stem" and stage_of("stages.1.0.edges.0->1.conv_5.op.1.weight") == "stage2"
    assert stage_of("head.4.weight") == "logits"
    arch = tiny_space.parse("|conv_5~0|+|conv_5~0|conv_5~1|+|none~0|skip_connect~1|conv_5~2|")
    x, y = mnist1d.val.tensors[0][:64], mnist1d.val.tensors[1][:64]
    before = stage_features(net, arch, x)
    assert set(before) == set(names) and before["logits"].shape == (64, 10)
    assert before["stem"].shape[-1] <= 8  # spatially pooled
    snapshot = {n: p.detach().clone() for n, p in net.parameters_of(arch).items()}
    score = wpl_nas.evaluation.accuracy(net, arch, x, y, batch_size=64)
    with torch.no_grad():
        for n, p in net.parameters_of(arch).items():
            if stage_of(n) == "stage2":
                p.add_(torch.randn_like(p))
    after = stage_features(net, arch, x)
    assert linear_cka(before["stem"], after["stem"]) == pytest.approx(1.0)  # untouched stage
    assert linear_cka(before["stage2"], after["stage2"]) < 0.99
    assert reset_stage(net, arch, snapshot, "stage2", x, y, batch_size=64) == score
    assert reset_stage(net, arch, snapshot, None, x, y, batch_size=64) == score
    assert linear_cka(after["stage2"], stage_features(net, arch, x)["stage2"]) == pytest.approx(1.0)  # unchanged
