"""Permutation groups, permuting a model, the flipped twin and activation probes.

Every architecture runs in float64, eval mode, with random BatchNorm statistics and affine
parameters (so BatchNorm is not the identity and every slot matters), at a small input size at
which the model is flip-exact. Models and graphs are built once per session.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models.vgg import VGG, cfgs, make_layers

import gcnn
from gcnn.analysis import (
    ActivationProbe,
    ModelGraph,
    PermGroup,
    Slot,
    UnsupportedGraphError,
    analyse_graph,
    flipped_twin,
    permute_model,
    random_permutations,
)

TOL = 1e-10


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small float64 forwards: one thread is fastest and robust on a shared, busy machine
    (two threads competing for two busy cores were 10-40× slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tv_vgg11_bn() -> nn.Module:
    """torchvision's VGG11-BN (class and forward) with a narrow head: the 25088-wide spatial
    Linear stays, its 4096 hidden units become 64 (keeps the test fast and small)."""
    features = make_layers(cfgs["A"], batch_norm=True)
    with torch.device("meta"):
        model = VGG(nn.Sequential(), num_classes=10, init_weights=False)
    model.features = features
    model.avgpool = nn.AdaptiveAvgPool2d((7, 7))
    model.classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, 64),
        nn.ReLU(True),
        nn.Dropout(),
        nn.Linear(64, 64),
        nn.ReLU(True),
        nn.Dropout(),
        nn.Linear(64, 10),
    )
    return model


def _tv(name: str) -> Callable[[], nn.Module]:
    return lambda: getattr(torchvision.models, name)(weights=None, num_classes=10)


#: name -> (builder, flip-exact input width used for every test of that model)
ARCHS: dict[str, tuple[Callable[[], nn.Module], int]] = {
    "vgg11": (lambda: gcnn.vgg11(width=0.25), 32),
    "vgg11_flip": (lambda: gcnn.vgg11_flip(width=0.25).export(), 32),
    "resnet50_flip": (lambda: gcnn.resnet50_flip(num_classes=10).export(), 33),
    "tv_vgg11_bn": (_tv_vgg11_bn, 64),  # 64 → 2×2 map → 7×7: the linear columns matter
    "resnet18": (_tv("resnet18"), 33),
    "resnet50": (_tv("resnet50"), 33),
    "mobilenet_v2": (_tv("mobilenet_v2"), 33),
    "mobilenet_v3_small": (_tv("mobilenet_v3_small"), 33),
    "efficientnet_b0": (_tv("efficientnet_b0"), 33),
    # concatenations: BatchNorms over several groups; 69 → 35 → 18 → 9 is flip-exact
    "densenet_small": (
        lambda: torchvision.models.DenseNet(8, (2, 2), 16, bn_size=2, num_classes=10),
        69,
    ),
}


def _randomise_batchnorm(model: nn.Module, x: Tensor, generator: torch.Generator) -> None:
    """Random biases and affine parameters, then running statistics measured on ``x`` (train mode).

    Measured statistics keep the deep nets well scaled (no dead or saturated units), so every
    slot of a group changes the outputs when it is left out.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in bns:
            m.weight.copy_(0.5 + torch.rand(m.num_features, generator=generator))
            m.bias.copy_(0.2 * torch.randn(m.num_features, generator=generator))
            m.reset_running_stats()
            m.momentum = None  # cumulative average: the statistics of x
        for m in model.modules():  # torchvision zero-inits conv biases: make them matter
            if isinstance(m, nn.Conv2d | nn.Linear) and m.bias is not None:
                m.bias.copy_(0.05 * torch.randn(m.bias.shape, generator=generator))
        model.train()
        model(x)
        model.eval()
        for m in bns:
            m.momentum = 0.1


@cache
def build(name: str) -> tuple[nn.Module, ModelGraph, Tensor]:
    """(float64 eval model, its graph, input (2, 3, W, W)) for architecture ``name``."""
    builder, width = ARCHS[name]
    torch.manual_seed(0)
    model = builder().double()
    generator = torch.Generator().manual_seed(1)
    calibration = torch.randn(4, 3, width, width, generator=generator, dtype=torch.float64)
    _randomise_batchnorm(model, calibration, generator)
    x = torch.randn(2, 3, width, width, generator=generator, dtype=torch.float64)
    return model, analyse_graph(model, x), x


@cache
def reference_output(name: str) -> Tensor:
    model, _, x = build(name)
    with torch.no_grad():
        return model(x)


def rel_err(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


def output(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x)


# --------------------------------------------------------------------------- 1. invariance


@pytest.mark.parametrize("name", list(ARCHS))
@settings(max_examples=2)
@given(seed=st.integers(0, 2**31 - 1), subset=st.booleans())
def test_permuting_groups_keeps_the_function(name: str, seed: int, subset: bool) -> None:
    model, graph, x = build(name)
    generator = torch.Generator().manual_seed(seed)
    perms = random_permutations(graph, generator)
    if subset:  # a random half of the groups: groups are independent of each other
        keep = torch.rand(len(perms), generator=generator) < 0.5
        perms = {k: p for (k, p), chosen in zip(perms.items(), keep, strict=True) if chosen}
    permuted = permute_model(model, graph, perms)
    assert rel_err(output(permuted, x), reference_output(name)) <= TOL


def test_permute_model_copies() -> None:
    """The caller's model is untouched; the copy's weights did change."""
    model, graph, x = build("resnet18")
    before = copy.deepcopy(model.state_dict())
    permuted = permute_model(model, graph, random_permutations(graph))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    changed = permuted.state_dict()
    assert sum(not torch.equal(before[k], changed[k]) for k in before) > len(before) // 2


@settings(max_examples=10)
@given(seed=st.integers(0, 2**31 - 1))
def test_permutations_compose_and_invert(seed: int) -> None:
    """new[i] = old[p[i]]: permuting by p then q is permuting by p[q]; p then p⁻¹ is identity."""
    model, graph, _ = build("vgg11")
    generator = torch.Generator().manual_seed(seed)
    p, q = random_permutations(graph, generator), random_permutations(graph, generator)
    twice = permute_model(permute_model(model, graph, p), graph, q)
    once = permute_model(model, graph, {k: p[k][q[k]] for k in p})
    back = permute_model(
        permute_model(model, graph, p), graph, {k: v.argsort() for k, v in p.items()}
    )
    for key, value in model.state_dict().items():
        assert torch.equal(twice.state_dict()[key], once.state_dict()[key])
        assert torch.equal(back.state_dict()[key], value)


def test_permute_model_rejects_bad_permutations() -> None:
    model, graph, _ = build("vgg11")
    first = graph.groups[0]
    with pytest.raises(KeyError, match="unknown groups"):
        permute_model(model, graph, {"nope": torch.arange(3)})
    with pytest.raises(ValueError, match="permutation"):
        permute_model(model, graph, {first.name: torch.zeros(first.size, dtype=torch.long)})


# --------------------------------------------------------------------------- 2. negative control


def _permute_slots(model: nn.Module, slots: list[Slot], perm: Tensor) -> nn.Module:
    """Permute only ``slots`` with ``perm``: a group with some slots missing."""
    fake = ModelGraph([PermGroup("part", len(perm), slots, "", [])], {}, None)  # type: ignore[arg-type]
    return permute_model(model, fake, {"part": perm})


def _outputs_without_each_slot(
    model: nn.Module, slots: list[Slot], perm: Tensor, x: Tensor
) -> Iterator[tuple[Slot, Tensor]]:
    """For each slot: the outputs with every *other* slot permuted by ``perm``.

    Written independently of :func:`permute_model` (index arithmetic per slot) and on one
    scratch copy whose touched tensors are restored each time: no deep copy per slot.
    """
    scratch = copy.deepcopy(model)
    state, original = scratch.state_dict(keep_vars=True), model.state_dict()
    for i in range(len(slots)):
        with torch.no_grad():
            for slot in slots:
                state[slot.key].copy_(original[slot.key])
            for slot in slots[:i] + slots[i + 1 :]:
                t = state[slot.key]
                inner = torch.arange(slot.inner)
                index = torch.arange(t.shape[slot.axis])
                moved = (perm[:, None] * slot.inner + inner).reshape(-1) + slot.offset
                index[slot.offset : slot.offset + moved.numel()] = moved
                t.copy_(t.index_select(slot.axis, index))
        yield slots[i], output(scratch, x)


@pytest.mark.parametrize("name", list(ARCHS))
def test_every_slot_of_a_group_is_needed(name: str) -> None:
    """Leaving out any one slot of a middle group changes the outputs: slots are minimal, and
    the invariance test above can fail."""
    model, graph, x = build(name)
    x, ref = x[:1], reference_output(name)[:1]  # eval mode: one image is enough
    group = graph.groups[len(graph.groups) // 2]
    perm = torch.randperm(group.size, generator=torch.Generator().manual_seed(3))
    full = _permute_slots(model, group.slots, perm)
    assert rel_err(output(full, x), ref) <= TOL
    assert any(s.axis == 1 for s in group.slots), "a middle group has consumers"
    for slot, y in _outputs_without_each_slot(model, group.slots, perm, x):
        err = rel_err(y, ref)
        assert err > 1e-6, f"{name}: dropping {slot} of {group.name} left the outputs unchanged"


# --------------------------------------------------------------------------- 3. structure


def _streams(graph: ModelGraph) -> list[PermGroup]:
    return [g for g in graph.groups if "+" in g.name]


def test_vgg11_has_one_group_per_conv() -> None:
    _, graph, _ = build("vgg11")
    widths = [16, 32, 64, 64, 128, 128, 128, 128]  # 64,128,256,256,512,512,512,512 × 0.25
    assert [g.size for g in graph.groups] == widths
    convs = [n for n, m in build("vgg11")[0].named_modules() if isinstance(m, nn.Conv2d)]
    assert [g.name for g in graph.groups] == convs
    for g, conv in zip(graph.groups, convs, strict=True):
        i = int(conv.split(".")[1])
        assert g.producers == [conv, f"features.{i + 1}"]  # conv and its BatchNorm
    assert graph.spatial_linears == {}
    assert graph.groups[-1].probe == "flatten"  # last value carrying the group: (B, 128)
    assert [(g.name, s.axis) for g, s in graph.slots_of("features.4.weight")] == [
        ("features.0", 1),
        ("features.4", 0),
    ]
    assert [(g.name, s.axis) for g, s in graph.slots_of("classifier.weight")] == [
        ("features.25", 1)
    ]


def test_tv_vgg11_bn_groups_and_spatial_linear() -> None:
    _, graph, _ = build("tv_vgg11_bn")
    assert [g.size for g in graph.groups] == [64, 128, 256, 256, 512, 512, 512, 512, 64, 64]
    assert graph.spatial_linears == {"classifier.0": (512, 7, 7)}
    last_conv = graph.groups[7]
    assert Slot("classifier.0.weight", 1, 0, 49) in last_conv.slots
    assert last_conv.probe == "avgpool"  # (B, 512, 7, 7), before the flatten


@pytest.mark.parametrize(
    ("name", "blocks", "widths", "expansion"),
    [
        ("resnet18", (2, 2, 2, 2), (64, 128, 256, 512), 1),
        ("resnet50", (3, 4, 6, 3), (64, 128, 256, 512), 4),
    ],
)
def test_resnet_has_one_stream_group_per_stage(
    name: str, blocks: tuple[int, ...], widths: tuple[int, ...], expansion: int
) -> None:
    model, graph, _ = build(name)
    streams = _streams(graph)
    assert [g.size for g in streams] == [w * expansion for w in widths]
    inner_per_block = 1 if expansion == 1 else 2  # conv1 (and conv2 for bottlenecks)
    stem = 0 if expansion == 1 else 1  # resnet18's stem joins layer1's stream
    assert len(graph.groups) == stem + inner_per_block * sum(blocks) + len(streams)
    last = "conv2" if expansion == 1 else "conv3"
    for stage, (n, stream) in enumerate(zip(blocks, streams, strict=True), start=1):
        adders = [f"layer{stage}.{b}.{last}" for b in range(n)]
        assert set(adders) <= set(stream.producers)
        if stage > 1 or expansion > 1:
            assert f"layer{stage}.0.downsample.0" in stream.producers
        assert stream.probe == f"layer{stage}_{n - 1}_relu_{2 if expansion > 1 else 1}" or (
            stage == 4 and stream.probe == "flatten"
        )
    if expansion == 1:
        assert "conv1" in streams[0].producers and "bn1" in streams[0].producers


def test_resnet50_flip_export_has_the_resnet50_groups() -> None:
    a, b = build("resnet50")[1], build("resnet50_flip")[1]
    assert [(g.name, g.size, g.slots) for g in a.groups] == [
        (g.name, g.size, g.slots) for g in b.groups
    ]
    assert len(a.groups) == 37


def test_mobilenet_v2_depthwise_conv_shares_its_input_group() -> None:
    model, graph, _ = build("mobilenet_v2")
    assert len(graph.groups) == 25  # stem, 16 expansions, 7 stage streams, last conv
    assert [g.size for g in _streams(graph)] == [24, 32, 64, 96, 160]  # stages with residuals
    for i in range(2, 18):
        g = graph.group_of(f"features.{i}.conv.0.0")  # the 1×1 expansion
        assert g is not None and g.name == f"features.{i}.conv.0.0"
        assert f"features.{i}.conv.1.0" in g.producers  # the depthwise 3×3 conv and its BN
        assert Slot(f"features.{i}.conv.1.0.weight", 0) in g.slots
        assert g.size == model.get_submodule(f"features.{i}.conv.1.0").out_channels
    assert "features.1.conv.0.0" in graph.group("features.0.0").producers  # t=1 block


def test_efficientnet_b0_squeeze_excitation_groups() -> None:
    model, graph, _ = build("efficientnet_b0")
    assert len(graph.groups) == 40  # stem, 15 expansions, 16 SE squeezes, 7 stages, head
    se = [n for n, m in model.named_modules() if type(m).__name__ == "SqueezeExcitation"]
    assert len(se) == 16
    for name in se:
        fc1, fc2 = model.get_submodule(name).fc1, model.get_submodule(name).fc2
        squeeze = graph.group_of(f"{name}.fc1")
        assert squeeze is not None and squeeze.size == fc1.out_channels
        assert Slot(f"{name}.fc2.weight", 1) in squeeze.slots
        gated = graph.group_of(f"{name}.fc2")  # the gate joins the features it scales
        assert gated is not None and gated.size == fc2.out_channels
        assert "+" in gated.name and len(gated.producers) >= 4  # expand/dw conv, BNs, fc2
    assert graph.groups[-1].size == 1280


def test_mobilenet_v3_small_group_count() -> None:
    _, graph, _ = build("mobilenet_v3_small")
    # stem 1 + expansions 10 + SE squeezes 9 + streams 5 + last conv + classifier hidden
    assert len(graph.groups) == 27
    assert graph.groups[-1].size == 1024 and graph.groups[-1].producers == ["classifier.0"]


def test_densenet_concatenation_offsets() -> None:
    _, graph, _ = build("densenet_small")
    # conv0, per dense layer a bottleneck and a growth group, the transition conv
    assert [g.size for g in graph.groups] == [16, 16, 8, 16, 8, 16, 16, 8, 16, 8]
    block1 = ["features.conv0", *(f"features.denseblock1.denselayer{i}.conv2" for i in (1, 2))]
    for group, offset in zip(block1, (0, 16, 24), strict=True):
        assert Slot("features.transition1.norm.running_var", 0, offset) in graph.group(group).slots
        assert Slot("features.transition1.conv.weight", 1, offset) in graph.group(group).slots
    assert (
        Slot("features.denseblock1.denselayer2.conv1.weight", 1, 16)
        in graph.group("features.denseblock1.denselayer1.conv2").slots
    )


@pytest.mark.parametrize("name", list(ARCHS))
def test_groups_are_consistent(name: str) -> None:
    """Names unique, probes carry the group, no slot in two groups, first conv input fixed."""
    model, graph, _ = build(name)
    names = [g.name for g in graph.groups]
    assert len(set(names)) == len(names)
    state = model.state_dict()
    seen: set[tuple[str, int, int]] = set()
    for g in graph.groups:
        assert g.probe == g.nodes[-1]
        for s in g.slots:
            length = state[s.key].shape[s.axis]
            assert 0 <= s.offset and s.offset + g.size * s.inner <= length
            assert (s.key, s.axis, s.offset) not in seen
            seen.add((s.key, s.axis, s.offset))
    first_conv = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    assert (f"{first_conv}.weight", 1, 0) not in seen  # image channels are fixed
    last_linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    assert (f"{last_linear}.weight", 0, 0) not in seen  # logits are fixed


# --------------------------------------------------------------------------- 4. twin


@pytest.mark.parametrize("name", list(ARCHS))
def test_twin_is_the_model_on_mirrored_images(name: str) -> None:
    model, graph, x = build(name)
    assert gcnn.flip_exactness(model, x.shape[-1], search=0).exact
    twin = flipped_twin(model, graph)
    assert rel_err(output(twin, x), output(model, x.flip(-1))) <= TOL
    assert rel_err(output(twin, x), reference_output(name)) > 1e-3  # the twin is another net


def test_twin_without_mirrored_linear_columns_fails_for_vgg11_bn() -> None:
    model, graph, x = build("tv_vgg11_bn")
    twin = flipped_twin(model, graph, mirror_linears=False)
    assert rel_err(output(twin, x), output(model, x.flip(-1))) > 1e-3


def test_twin_at_an_inexact_size_is_far_off() -> None:
    model, graph, _ = build("resnet18")
    report = gcnn.flip_exactness(model, 64, search=0)
    assert not report.exact
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4)).double()
    twin = flipped_twin(model, graph)
    assert rel_err(output(twin, x), output(model, x.flip(-1))) > 1e-2


def test_twin_builds_its_own_graph_and_leaves_the_model_alone() -> None:
    model, graph, x = build("tv_vgg11_bn")
    before = copy.deepcopy(model.state_dict())
    twin = flipped_twin(model, example_input=x)
    assert rel_err(output(twin, x), output(model, x.flip(-1))) <= TOL
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="example_input"):
        flipped_twin(model)


# --------------------------------------------------------------------------- functional ops


class _Functional(nn.Module):
    """Functional calls, a reused conv, a channel-broadcast gate, a self-concatenation, a
    spatial reduction and a spatial Linear reached through ``view``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.shared = nn.Conv2d(6, 6, 3, padding=1)
        self.gate = nn.Conv2d(6, 1, 1)
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.conv3 = nn.Conv2d(12, 5, 3, padding=1)
        self.fc = nn.Linear(5 * 4 * 4, 7)
        self.bn1d = nn.BatchNorm1d(7)
        self.fc2 = nn.Linear(7, 3)

    def forward(self, x: Tensor) -> Tensor:
        a = F.relu(self.bn(self.conv1(x)))
        a = torch.relu(self.conv2(a)) + a * 0.5
        a = self.shared(torch.tanh(self.shared(a)))  # reuse: input and output share a group
        b = a * torch.sigmoid(self.gate(a))  # (B, 1, H, W) gate, broadcast over channels
        b = self.dw(b).clamp(min=0)
        c = torch.cat([a, b], dim=1)  # the same group twice: offsets 0 and 6
        d = F.max_pool2d(self.conv3(c), 2)
        d = d - d.mean((2, 3), keepdim=True)
        e = self.bn1d(self.fc(d.view(d.size(0), -1)))
        return self.fc2(F.relu(e))


@cache
def functional_setup() -> tuple[nn.Module, ModelGraph, Tensor]:
    torch.manual_seed(0)
    model = _Functional().double()
    generator = torch.Generator().manual_seed(1)
    _randomise_batchnorm(model, torch.randn(8, 3, 8, 8, generator=generator).double(), generator)
    x = torch.randn(2, 3, 8, 8, generator=generator, dtype=torch.float64)
    return model, analyse_graph(model, x), x


def test_functional_ops_groups() -> None:
    _, graph, _ = functional_setup()
    assert [(g.name, g.size) for g in graph.groups] == [
        ("conv1+conv2+shared", 6),
        ("gate", 1),
        ("conv3", 5),
        ("fc", 7),
    ]
    main = graph.groups[0]
    assert {Slot("conv3.weight", 1, 0), Slot("conv3.weight", 1, 6)} <= set(main.slots)
    assert {Slot("shared.weight", 0), Slot("shared.weight", 1), Slot("dw.weight", 0)} <= set(
        main.slots
    )
    assert graph.spatial_linears == {"fc": (5, 4, 4)}
    assert Slot("fc.weight", 1, 0, 16) in graph.group("conv3").slots
    assert Slot("bn1d.running_mean", 0) in graph.group("fc").slots


@settings(max_examples=10)
@given(seed=st.integers(0, 2**31 - 1))
def test_functional_ops_permutation_and_twin(seed: int) -> None:
    model, graph, x = functional_setup()
    perms = random_permutations(graph, torch.Generator().manual_seed(seed))
    ref = output(model, x)
    assert rel_err(output(permute_model(model, graph, perms), x), ref) <= TOL
    main, perm = graph.groups[0], perms[graph.groups[0].name]
    if not torch.equal(perm, torch.arange(main.size)):  # every slot of the main group is needed
        for slot, y in _outputs_without_each_slot(model, main.slots, perm, x):
            assert rel_err(y, ref) > 1e-6, slot
    twin = flipped_twin(model, graph)
    assert rel_err(output(twin, x), output(model, x.flip(-1))) <= TOL


# --------------------------------------------------------------------------- random nets


class _Block(nn.Module):
    """One block of a random CNN on ``c`` channels; ``out`` is its output channel count."""

    def __init__(self, kind: str, c: int, width: int) -> None:
        super().__init__()
        self.kind, self.out = kind, c
        if kind == "conv":
            self.out = width
            self.body = nn.Sequential(nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width))
        elif kind == "res":
            self.body = nn.Sequential(
                nn.Conv2d(c, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                nn.Conv2d(width, c, 3, padding=1, bias=False),
                nn.BatchNorm2d(c),
            )
        elif kind == "se":
            self.body = nn.Sequential(
                nn.AdaptiveAvgPool2d(1),
                nn.Conv2d(c, width, 1),
                nn.ReLU(),
                nn.Conv2d(width, c, 1),
                nn.Sigmoid(),
            )
        elif kind == "dw":
            self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=c), nn.BatchNorm2d(c))
        elif kind == "cat":
            self.out = c + width
            self.body = nn.Conv2d(c, width, 1)
        else:  # "pool"
            self.body = nn.MaxPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind in ("conv", "dw"):
            return F.hardswish(self.body(x))
        if self.kind == "res":
            return F.relu(x + self.body(x))
        if self.kind == "se":
            return x * self.body(x)
        if self.kind == "cat":
            return torch.cat([x, self.body(x)], dim=1)
        return self.body(x)


class _RandomNet(nn.Module):
    def __init__(self, kinds: list[str], widths: list[int], spatial_head: bool) -> None:
        super().__init__()
        c, blocks = 3, []
        for kind, width in zip(kinds, widths, strict=True):
            blocks.append(_Block(kind, c, width))
            c = blocks[-1].out
        self.blocks = nn.ModuleList(blocks)
        self.spatial_head = spatial_head
        size = 8 // 2 ** kinds.count("pool")
        self.head = nn.Linear(c * size * size if spatial_head else c, 3)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        if not self.spatial_head:
            x = x.mean((2, 3))
        return self.head(torch.flatten(x, 1))


@st.composite
def random_nets(draw: st.DrawFn) -> _RandomNet:
    n = draw(st.integers(1, 6))
    first = draw(st.sampled_from(["conv", "cat"]))  # the image channels are fixed: start wide
    rest = draw(st.lists(st.sampled_from(["conv", "res", "se", "dw", "cat", "pool"]), min_size=n))
    kinds = [first, *rest][: n + 1]
    while kinds.count("pool") > 2:
        kinds.remove("pool")
    widths = draw(st.lists(st.integers(2, 5), min_size=len(kinds), max_size=len(kinds)))
    return _RandomNet(kinds, widths, draw(st.booleans()))


@settings(max_examples=15)
@given(net=random_nets(), seed=st.integers(0, 2**31 - 1))
def test_random_nets(net: _RandomNet, seed: int) -> None:
    """Any composition of conv, residual, squeeze-excitation, depthwise, concatenation and
    pooling blocks: permuting the groups keeps the function; the twin is exact at 8×8."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = net.double()
    _randomise_batchnorm(model, torch.randn(4, 3, 8, 8, generator=generator).double(), generator)
    x = torch.randn(2, 3, 8, 8, generator=generator, dtype=torch.float64)
    graph = analyse_graph(model, x)
    ref = output(model, x)
    perms = random_permutations(graph, generator)
    assert rel_err(output(permute_model(model, graph, perms), x), ref) <= TOL
    assert rel_err(output(flipped_twin(model, graph), x), output(model, x.flip(-1))) <= TOL
    convs = sum(isinstance(m, nn.Conv2d) and m.groups == 1 for m in model.modules())
    assert len(graph.groups) <= convs  # every group has a creator; none is the image's
    _, acts = ActivationProbe(model, graph)(x)
    assert [a.shape[1] for a in acts.values()] == [g.size for g in graph.groups]


def test_a_residual_over_a_concatenation_splits_the_conv_output() -> None:
    """cat([image, conv(image)]) + res(…): the residual conv's first 3 outputs join the fixed
    image channels, its last 2 the concatenated conv's group."""
    torch.manual_seed(0)
    model = _RandomNet(["cat", "res", "conv", "cat", "res"], [2, 3, 4, 2, 3], False).double()
    generator = torch.Generator().manual_seed(1)
    _randomise_batchnorm(model, torch.randn(4, 3, 8, 8, generator=generator).double(), generator)
    x = torch.randn(2, 3, 8, 8, generator=generator, dtype=torch.float64)
    graph = analyse_graph(model, x)
    names = [g.name for g in graph.groups]
    assert names[:2] == ["blocks.0.body+blocks.1.body.3", "blocks.1.body.0"]
    joined = graph.groups[0]
    assert joined.size == 2
    assert Slot("blocks.1.body.3.weight", 0, 3) in joined.slots
    assert Slot("blocks.1.body.4.running_mean", 0, 3) in joined.slots
    assert Slot("blocks.1.body.0.weight", 1, 3) in joined.slots
    assert not any(s.offset == 0 and s.key.startswith("blocks.1.body.3") for s in joined.slots)
    # blocks 3-4: cat([conv (4), conv (2)]) + res: the res conv (4 outputs) splits into 4 + 2
    assert [g.size for g in graph.groups if "blocks.4.body.3" in g.producers] == [4, 2]
    ref = output(model, x)
    perms = random_permutations(graph, generator)
    assert rel_err(output(permute_model(model, graph, perms), x), ref) <= TOL
    for slot, y in _outputs_without_each_slot(model, joined.slots, torch.tensor([1, 0]), x):
        assert rel_err(y, ref) > 1e-6, slot


# --------------------------------------------------------------------------- 5. unsupported


class _Permute(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x).permute(0, 2, 3, 1)
        return self.fc(y).mean((1, 2))


class _ChannelShuffle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        b, c, h, w = y.shape
        y = y.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
        return self.head(y)


class _Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.grouped = nn.Conv2d(4, 4, 3, groups=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.grouped(self.conv(x)).mean((2, 3))


@pytest.mark.parametrize(
    ("module", "pattern"),
    [
        (_Permute(), r"node permute \(call_method permute\) is not supported"),
        (_ChannelShuffle(), r"node view \(call_method view\) reshapes"),
        (_Grouped(), r"grouped \(call_module grouped\).*groups=2"),
        (gcnn.vgg11_flip(width=0.25), r"gcnn flip layer.*export\(\)"),
    ],
)
def test_unsupported_graphs_name_the_op(module: nn.Module, pattern: str) -> None:
    with pytest.raises(UnsupportedGraphError, match=pattern):
        analyse_graph(module, torch.randn(1, 3, 32, 32))


# --------------------------------------------------------------------------- 6. probes


@pytest.mark.parametrize("name", list(ARCHS))
def test_activation_probe_returns_every_group(name: str) -> None:
    model, graph, x = build(name)
    probe = ActivationProbe(model, graph)
    with torch.no_grad():
        out, acts = probe(x)
    assert torch.equal(out, reference_output(name))
    assert list(acts) == [g.name for g in graph.groups]
    for g in graph.groups:
        assert acts[g.name].shape[:2] == (2, g.size)
    # on a permuted copy, each probe carries the permuted channels
    perms = random_permutations(graph, torch.Generator().manual_seed(5))
    with torch.no_grad():
        _, permuted = ActivationProbe(permute_model(model, graph, perms), graph)(x)
    for g in graph.groups:
        torch.testing.assert_close(permuted[g.name], acts[g.name][:, perms[g.name]])


def test_activation_probe_can_tap_earlier_nodes() -> None:
    """An overridden probe before an in-place ReLU still sees the pre-ReLU values."""
    model, graph, x = build("resnet18")
    group = graph.group("layer1.0.conv1")
    assert group.nodes[:2] == ["layer1_0_conv1", "layer1_0_bn1"]  # then an in-place ReLU
    probe = ActivationProbe(model, graph, probes={group.name: group.nodes[1]})
    with torch.no_grad():
        _, acts = probe(x)
        bn = model.layer1[0].bn1(
            model.layer1[0].conv1(model.maxpool(model.relu(model.bn1(model.conv1(x)))))
        )
    assert (acts[group.name] < 0).any()
    torch.testing.assert_close(acts[group.name], bn)
    with pytest.raises(KeyError):
        ActivationProbe(model, graph, probes={"nope": "x"})


def test_activation_probe_on_the_twin_sees_mirrored_maps() -> None:
    model, graph, x = build("resnet18")
    with torch.no_grad():
        _, acts = ActivationProbe(model, graph)(x.flip(-1))
        _, twin_acts = ActivationProbe(flipped_twin(model, graph), graph)(x)
    for g in graph.groups:  # twin(x) at every layer is the model on flip(x), mirrored back
        expected = acts[g.name].flip(-1) if acts[g.name].dim() == 4 else acts[g.name]
        torch.testing.assert_close(twin_acts[g.name], expected, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- docs


def test_docs_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The example of docs/analysis.md's section "Permutation groups and the flipped twin"."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "analysis.md").read_text()
    section = doc.split("## Permutation groups and the flipped twin", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "docs/analysis.md", "exec"), {})
    assert "12 64 layer1_1_relu_1" in capsys.readouterr().out


# --------------------------------------------------------------------------- third-party layers


class _Padded(nn.Module):
    """Padding modules and F.pad between convs: spatial only, so the channels pass through."""

    def __init__(self, channel_pad: bool = False) -> None:
        super().__init__()
        self.channel_pad = channel_pad
        self.conv1 = nn.Conv2d(3, 6, 3)
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))
        self.conv2 = nn.Conv2d(6, 6, 3, stride=2)
        self.fill = nn.ConstantPad2d(1, 0.5)
        self.conv3 = nn.Conv2d(7 if channel_pad else 6, 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(self.pad(torch.relu(self.conv1(x))))
        y = F.pad(y, (2, 1, 1, 2, 0, 1) if self.channel_pad else (2, 1, 1, 2))
        return self.conv3(self.fill(y)).mean((2, 3))


class _Standardised(nn.Conv2d):
    """Weight standardisation: the conv's weight is computed, not a parameter."""

    def forward(self, x: Tensor) -> Tensor:
        w = (self.weight - self.weight.mean((1, 2, 3), keepdim=True)) / 2
        return F.conv2d(x, w, self.bias)


class _ShapeBranch(nn.Module):
    """Control flow on the input's shape (timm's ConvMlp does this): specialised when traced."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        if y.shape[-1] < 7:
            y = F.adaptive_avg_pool2d(y, (7, 7))
        return self.head(y).mean((2, 3))


def test_padding_modules_and_f_pad_keep_the_channels() -> None:
    model = _Padded().double().eval()
    x = torch.randn(2, 3, 13, 13, dtype=torch.float64)
    graph = analyse_graph(model, x)
    assert [g.name for g in graph.groups] == ["conv1", "conv2"]
    assert [s.key for s in graph.group("conv2").slots] == [
        "conv2.weight", "conv2.bias", "conv3.weight",
    ]  # fmt: skip
    permuted = permute_model(model, graph, random_permutations(graph))
    torch.testing.assert_close(output(permuted, x), output(model, x))
    with pytest.raises(UnsupportedGraphError, match=r"pad.*pads the channel axis"):
        analyse_graph(_Padded(channel_pad=True), x.float())


def test_a_computed_conv_weight_is_refused_naming_the_node() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), _Standardised(4, 4, 3))
    with pytest.raises(UnsupportedGraphError, match=r"conv2d whose weight is computed"):
        analyse_graph(model, torch.randn(1, 3, 16, 16))


@pytest.mark.parametrize("width", [6, 12])
def test_control_flow_on_shapes_is_specialised_to_the_example(width: int) -> None:
    """Both branches trace (plain fx raises on ``if y.shape[-1] < 7``); each graph runs the
    branch its example takes and computes the model."""
    model = _ShapeBranch().eval()
    x = torch.randn(2, 3, width + 2, width + 2)
    graph = analyse_graph(model, x)
    assert [g.name for g in graph.groups] == ["conv"]
    pooled = any(n.target is F.adaptive_avg_pool2d for n in graph.graph_module.graph.nodes)
    assert pooled == (width < 7)
    torch.testing.assert_close(graph.graph_module(x), output(model, x))
