"""The ``mobilenet`` kind (MBConv stages): choices, strings, the supernet's paths, stand-alone export,
MobileNetV2's parameter count, and a search end to end."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
import torchvision
import yaml
from conftest import assert_round_trips, assert_standalone_matches

from wpl_nas.errors import ConfigError
from wpl_nas.evaluation.anatomy import stage_features, stage_names
from wpl_nas.spaces import Genotype, MobileNetSpace, SearchSpace, load_space
from wpl_nas.supernet import MobileNetSupernet, Supernet
from wpl_nas.tracking.figures import cell_figure, png_bytes, space_figure

# Stage 1 keeps the stem's shape (a residual first block, no expansion), stage 2 halves the size
# and has optional blocks, stage 3 keeps 8 channels (a residual first block again).
SPEC = {
    "kind": "mobilenet", "name": "tiny-mb", "dims": 2, "stem_channels": 4,
    "stages": [
        {"channels": 4, "stride": 1, "depth": [1], "kernel": [3], "expand": [1]},
        {"channels": 8, "stride": 2, "depth": [1, 2, 3], "kernel": [3, 5], "expand": [2, 3]},
        {"channels": 8, "stride": 1, "depth": [1, 2], "kernel": [3], "expand": [2, 4]},
    ],
    "last_channels": 16,
}
CLASSES = 5

# MobileNetV2 on ImageNet (Sandler et al., Table 2): (expansion t, channels c, blocks n, stride s).
MOBILENET_V2 = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1)]


@pytest.fixture(scope="module")
def space() -> MobileNetSpace:
    s = SearchSpace.from_dict(SPEC)
    assert isinstance(s, MobileNetSpace)
    return s


def arch_of(space: MobileNetSpace, **stages: tuple[int, int, int]) -> Genotype:
    """``s2=(kernel, expand, depth)``; stages not named take their first choices."""
    values = dict(next(space.enumerate()).items())
    for s, (k, e, d) in stages.items():
        values.update({f"{s}/kernel": str(k), f"{s}/expand": str(e), f"{s}/depth": str(d)})
    return space.make(values)


def test_the_builtin_space_is_mobilenet_v2_shaped():
    space = load_space("mobilenet")
    assert isinstance(space, MobileNetSpace) and space.dims == 2
    assert [st.channels for st in space.stages] == [16, 24, 32, 64, 96, 160, 320]
    assert space.last_channels == 1280 and space.stem_channels == 32
    assert space.size == 27 ** 5 * 9  # five stages with 3 x 3 x 3 choices, the last with 3 x 3
    assert all("." not in label for label in space.choices)
    text = space.describe()
    assert "MBConv" in text and "1x1 conv to 1280 ch" in text and "MobileNetV2" in text and "Once-for-All" in text
    net = Supernet(space, in_channels=3, num_classes=10)
    arch = space.sample(random.Random(0))
    with net.use(arch):
        assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_choices_and_picks(space):
    assert list(space.choices)[:6] == ["s1/kernel", "s1/expand", "s1/depth", "s2/kernel", "s2/expand", "s2/depth"]
    assert space.choices["s2/depth"] == ("1", "2", "3") and space.choices["s3/expand"] == ("2", "4")
    assert space.size == 1 * (2 * 2 * 3) * (2 * 2)
    arch = arch_of(space, s2=(5, 3, 2))
    assert [(p.kernel, p.expand, p.depth, p.variant) for p in space.picks(arch)] == [
        (3, 1, 1, "k3e1"), (5, 3, 2, "k5e3"), (3, 2, 1, "k3e2")]


def test_suggest_parse_and_string_round_trip(space):
    assert all(isinstance(arch, Genotype) for arch in assert_round_trips(space))
    assert len(set(space.enumerate())) == space.size


GOOD = "s1/kernel=3;s1/expand=1;s1/depth=1;s2/kernel=5;s2/expand=3;s2/depth=2;s3/kernel=3;s3/expand=4;s3/depth=1"


@pytest.mark.parametrize(("text", "message"), [
    (GOOD.replace("s2/kernel=5", "s2/kernel=7"),
     "value '7' of s2/kernel is not in space 'tiny-mb'; valid choices: 3, 5"),
    (GOOD.replace("s2/depth=2", "s2/depth=4"),
     "value '4' of s2/depth is not in space 'tiny-mb'; valid choices: 1, 2, 3"),
    (GOOD.replace("s3/expand=4", "s3/expand=6"),
     "value '6' of s3/expand is not in space 'tiny-mb'; valid choices: 2, 4"),
    (GOOD.replace(";s3/depth=1", ""), r"missing choices \['s3/depth'\]"),
    (GOOD + ";s4/depth=1", r"unexpected choices \['s4/depth'\]"),
    ("|conv_3~0|", "must look like label=value .*; architectures of space 'tiny-mb' look like s1/kernel=3;"),
])
def test_bad_architectures_name_the_value_and_the_choices(space, text, message):
    with pytest.raises(ConfigError, match=message):
        space.parse(text)


def stage(**change: object) -> dict[str, object]:
    return {"channels": 8, "stride": 1, "depth": [1], "kernel": [3], "expand": [2], **change}


@pytest.mark.parametrize(("change", "message"), [
    ({"dims": 3}, "'dims': must be 1 or 2, but got 3"),
    ({"stem_channels": 0}, "'stem_channels': must be a positive integer, but got 0"),
    ({"stages": []}, "'stages': must be a non-empty list of stage mappings, but got \\[\\]"),
    ({"stages": [stage(kernel=[3, 4])]},
     r"'stages\[0\].kernel': kernel sizes must be odd, but got \[4\]; valid choices: odd positive integers"),
    ({"stages": [stage(depth=[])]},
     r"'stages\[0\].depth': must be a non-empty list of positive integers, but got \[\]"),
    ({"stages": [stage(expand=[2, 2])]}, r"'stages\[0\].expand': lists a value twice: \[2, 2\]"),
    ({"stages": [stage(kernels=[3])]}, r"'stages\[0\]': unknown key\(s\) \['kernels'\]; valid keys: "),
    ({"stages": [{"channels": 8, "stride": 1, "depth": [1], "kernel": [3]}]},
     r"'stages\[0\]': missing key\(s\) \['expand'\]"),
    ({"last_channels": -1}, r"'last_channels': must be a positive integer \(or 0 for none\), but got -1"),
    ({"last_channels": True}, r"'last_channels': must be a positive integer \(or 0 for none\), but got True"),
    ({"stem": 4}, r"'<top level>': unknown key\(s\) \['stem'\]"),
    ({"kind": "mobilnet"}, "unknown search space kind 'mobilnet' \\(did you mean 'mobilenet'\\?\\)"),
])
def test_bad_space_files_are_precise_errors(change, message):
    with pytest.raises(ConfigError, match=message):
        SearchSpace.from_dict({**SPEC, **change})


def test_yaml_file_errors_name_the_file(tmp_path):
    path = tmp_path / "mb.yaml"
    path.write_text(yaml.safe_dump({**SPEC, "stages": [stage(stride=0)]}))
    with pytest.raises(ConfigError, match=rf"{path}: field 'stages\[0\].stride': must be a positive integer"):
        load_space(path)


def test_only_the_path_is_trained_and_the_standalone_network_matches(space):
    torch.manual_seed(0)
    net = Supernet(space, in_channels=3, num_classes=CLASSES)
    assert isinstance(net, MobileNetSupernet)
    x = torch.randn(4, 3, 8, 8)
    y = torch.randint(0, CLASSES, (4,))
    archs = [arch_of(space, s2=(5, 3, 1), s3=(3, 4, 2)), arch_of(space, s2=(3, 2, 3), s3=(3, 2, 1)),
             *(space.sample(random.Random(seed)) for seed in range(2))]
    for arch in archs:
        net.zero_grad(set_to_none=True)
        with net.use(arch):
            logits = net(x)
            assert logits.shape == (4, CLASSES)
            F.cross_entropy(logits, y).backward()
        used = set(net.parameter_names_of(arch))
        trained = {n for n, p in net.named_parameters() if p.grad is not None}
        assert trained == used
        picks = space.picks(arch)
        assert {tuple(n.split(".")[4:6]) for n in used if ".edges." in n} == {
            (f"s{i + 1}b{j}", p.variant) for i, p in enumerate(picks) for j in range(p.depth)}
        # Positions beyond the stage's depth run nothing, in any variant.
        for name, param in net.named_parameters():
            if name.startswith("stages.1.") and ".edges." in name and int(name.split(".")[2]) >= picks[1].depth:
                assert param.grad is None, name

        assert set(assert_standalone_matches(net, arch, x).state_dict()) == used


def test_first_blocks_change_shape_and_later_blocks_are_residual(space):
    net = Supernet(space, in_channels=3, num_classes=CLASSES)
    s1, s2, s3 = (net.stages[i] for i in range(3))
    assert s1[0].edges["s1b0"]["k3e1"].residual  # 4 -> 4 channels at stride 1
    assert not s2[0].edges["s2b0"]["k5e3"].residual and s2[1].edges["s2b1"]["k5e3"].residual
    assert s3[0].edges["s3b0"]["k3e4"].residual
    assert isinstance(s1[0].edges["s1b0"]["k3e1"].expand, torch.nn.Identity)  # MobileNetV2's first block
    assert s2[0].edges["s2b0"]["k5e3"].depthwise[0].weight.shape == (12, 1, 5, 5)  # 4 in x 3, depthwise
    assert list(dict(s3.named_children())) == ["0", "1", "last", "out"]
    plain = SearchSpace.from_dict({k: v for k, v in SPEC.items() if k != "last_channels"})  # no final 1x1 conv
    net = Supernet(plain, in_channels=3, num_classes=CLASSES)
    assert list(dict(net.stages[2].named_children())) == ["0", "1", "out"] and net.head[-1].in_features == 8


def test_mobilenet_v2_parameter_count_is_torchvisions():
    spec = {"kind": "mobilenet", "name": "mobilenet-v2", "dims": 2, "stem_channels": 32, "stem_stride": 2,
            "last_channels": 1280,
            "stages": [{"channels": c, "stride": s, "depth": [n], "kernel": [3], "expand": [t]}
                       for t, c, n, s in MOBILENET_V2]}
    space = SearchSpace.from_dict(spec)
    assert space.size == 1
    arch = next(space.enumerate())
    net = Supernet(space, in_channels=3, num_classes=1000, fixed=arch)
    reference = torchvision.models.mobilenet_v2(num_classes=1000)
    expected = sum(p.numel() for p in reference.parameters())
    assert expected == 3_504_872
    assert net.count_parameters() == expected
    # Layer by layer, too: the same tensor shapes in the same order.
    assert [tuple(p.shape) for p in net.parameters()] == [tuple(p.shape) for p in reference.parameters()]


def test_dims_1_runs_on_sequences_and_the_data_check_names_the_mismatch(space):
    space1 = SearchSpace.from_dict({**SPEC, "dims": 1})
    net = Supernet(space1, in_channels=1, num_classes=CLASSES)
    with net.use(space1.sample(random.Random(1))):
        assert net(torch.randn(3, 1, 40)).shape == (3, CLASSES)
    space1.check_data("mnist1d", (1, 40))
    with pytest.raises(ConfigError, match="space 'tiny-mb' is for 2-D inputs, but dataset 'mnist1d' is 1-D"):
        space.check_data("mnist1d", (1, 40))


def test_the_anatomy_sees_every_stage_whatever_the_depth(space):
    net = Supernet(space, in_channels=3, num_classes=CLASSES)
    arch = arch_of(space, s2=(3, 2, 1), s3=(3, 2, 1))  # the last positions of stages 2 and 3 do not run
    features = stage_features(net, arch, torch.randn(6, 3, 8, 8))
    assert set(features) == set(stage_names(net)) == {"stem", "stage1", "stage2", "stage3", "logits"}
    assert features["stage3"].shape == (6, 16, 4, 4)  # after the last 1x1 conv to 16 channels


def test_the_network_draws_with_and_without_an_architecture(space):
    arch = arch_of(space, s2=(5, 2, 2), s3=(3, 4, 2))
    graph = space.dag(arch)
    assert graph.edges["s1b0", "s1"]["live"] and graph.edges["s1", "s2b0"]["label"] == "k5e2"
    assert not graph.edges["s2b1", "s2b2"]["live"] and graph.edges["s2b1", "s2"]["live"]  # depth 2 of 3
    assert all("label" in graph.nodes[n] and "pos" in graph.nodes[n] for n in graph.nodes)
    whole = space.dag()
    assert whole.edges["s2b0", "s2"]["label"] == "depth 1" and whole.edges["s1", "s2b0"]["label"] == "k3|5\ne2|3"
    assert png_bytes(cell_figure(space, arch)).startswith(b"\x89PNG")
    assert png_bytes(space_figure(space)).startswith(b"\x89PNG")


