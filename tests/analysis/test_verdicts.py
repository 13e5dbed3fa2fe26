"""Verdicts an expert can trust: mirror-closed statistics, dead channels, the best involution,
twin-consistent matching, the nearest GCNN of a net that is not one, REPAIR at activations.

Every test has its negative control: a plain random CNN must not be certified, statistics that
are not mirror-closed must be asymmetric, an unmerged net must not be equivariant, a BN reset
must differ from REPAIR.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F

import gcnn
from gcnn.analysis.check import LayerReport, verdict
from gcnn.analysis.graph import analyse_graph, flipped_twin, permute_model, random_permutations
from gcnn.analysis.matching import match_layers
from gcnn.analysis.merge import interpolate, reset_batchnorm
from gcnn.analysis.nearest import nearest_gcnn
from gcnn.analysis.probes import MultiProbe, probe_nodes
from gcnn.analysis.repair import activation_statistics, renormalised, repair_activations
from gcnn.analysis.statistics import (
    PairStatistics,
    collect_pair_statistics,
    collect_twin_statistics,
    probe_function,
)
from gcnn.cli import main
from gcnn.data.datasets import load_dataset
from gcnn.data.samples import SAMPLES_DIR
from gcnn.testing import flip_equivariance_error
from tests.analysis.conftest import batches_of

ROOT = Path(__file__).resolve().parents[2]
ALPHAS = ["--alphas", "0", "0.5", "1"]


# --------------------------------------------------------------------------- helpers


def _kill_pairs(flip_model: nn.Module, every: int = 5) -> int:
    """Make every ``every``-th channel pair of each flip BatchNorm constant (γ = 0, β = −1: the
    ReLU after it outputs 0 everywhere). Pair-shared, so the model stays a GCNN."""
    killed = 0
    with torch.no_grad():
        for m in flip_model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None:
                n = m.weight.numel()
                idx = torch.arange(0, n, every)
                m.weight[idx] = 0.0
                m.bias[idx] = -1.0
                killed += len(idx)
    return killed


def _permuted_export(flip_model: nn.Module, x: torch.Tensor, seed: int) -> nn.Module:
    plain = flip_model.eval().export()
    graph = analyse_graph(plain, x[:1])
    perms = random_permutations(graph, torch.Generator().manual_seed(seed))
    return permute_model(plain, graph, perms).eval()


def _twin_stats(model: nn.Module, x: torch.Tensor, mirror_closed: bool = True, size: int = 25):
    graph = analyse_graph(model, x[:1])
    nodes = probe_nodes(graph)
    twin = flipped_twin(model, graph)
    stats = collect_twin_statistics(
        probe_function(MultiProbe(model, graph, nodes)),
        probe_function(MultiProbe(twin, graph, nodes)),
        batches_of(x, size=size),
        mirror_closed=mirror_closed,
    )
    return graph, twin, stats


def _asymmetry(stats: PairStatistics) -> float:
    live = ~stats.dead()
    c = stats.correlation()[live][:, live]
    return float((c - c.T).norm() / c.norm())


@functools.cache
def _fmnist(n: int, split: str = "train") -> torch.Tensor:
    """Real Fashion-MNIST images, float64, normalised, 32×32 (the loader pads 28 → 32)."""
    data = load_dataset("fashion-mnist", None)
    x = (data.train_x if split == "train" else data.test_x)[:n].double() / 255
    assert x.shape[-1] == 32  # an exact size for the VGG
    return (x - data.mean[0]) / data.std[0]


def _check_cli(
    tmp_path: Path, model: nn.Module, arch: str, kwargs: dict, size: int, *extra: str
) -> dict:
    weights = tmp_path / "model.safetensors"
    save_file({k: v.float().contiguous() for k, v in model.state_dict().items()}, str(weights))
    out = tmp_path / "report"
    argv = [
        "check", "--arch", arch, "--model-kwargs", json.dumps(kwargs), "--weights", str(weights),
        "--data", str(SAMPLES_DIR / "cifar10"), "--image-size", str(size),
        "--num-images", "20", "--num-eval", "20", *ALPHAS, "--out", str(out), *extra,
    ]  # fmt: skip
    assert main(argv) == 0
    return json.loads((out / "report.json").read_text())


# --------------------------------------------------------------------------- planted GCNNs


@pytest.mark.parametrize(
    ("arch", "kwargs", "size", "extra"),
    [
        ("vgg11", {"width": 0.25}, 32, ()),
        # ResNet50: the plain merge curve only (REPAIR passes on 25 M weights take minutes here)
        ("resnet50", {"num_classes": 10}, 33, ("--methods", "interpolate")),
    ],
)
def test_planted_gcnn_with_dead_channels_on_20_real_images_is_a_gcnn(
    tmp_path, cifar_images, arch, kwargs, size, extra
) -> None:
    torch.manual_seed(0)
    flip = gcnn.create_model(f"{arch}_flip", **kwargs)
    assert _kill_pairs(flip) > 0
    x = F.interpolate(cifar_images.float(), size=(size, size), mode="bilinear")
    report = _check_cli(tmp_path, _permuted_export(flip, x, 1), arch, kwargs, size, *extra)
    assert report["exact_size"] and report["statistics"]["mirror_closed"]
    assert sum(la["dead_channels"] for la in report["layers"]) > 0  # they are present …
    v = report["verdict"]
    assert v["gcnn"] is True and v["decidable_layers"] > 0, v  # … and change nothing
    for la in report["layers"]:
        assert la["involution"] or not la["decidable"], la
        if la["decidable"]:
            assert la["exact"] and la["involution_gap"] <= 1e-6 and la["fixed_points"] == 0
    assert report["nearest_gcnn"]["certified"]


def test_plain_random_cnn_through_the_same_check_is_not_a_gcnn(tmp_path, cifar_images) -> None:
    """The negative control of the planted test: the same command on a plain random VGG11."""
    torch.manual_seed(0)
    plain = gcnn.vgg11(width=0.25).eval()
    report = _check_cli(tmp_path, plain, "vgg11", {"width": 0.25}, 32)
    assert report["verdict"]["gcnn"] is False and report["verdict"]["exact_layers"] == 0
    assert all(la["equivariance_error_normalized"] > 0.05 for la in report["layers"])


# --------------------------------------------------------------------------- mirror closure


def test_mirror_closed_statistics_are_symmetric_on_data_that_is_not() -> None:
    """Fashion-MNIST is not mirror-symmetric (shoes face one way): without the mirror images
    C is asymmetric; with them it is symmetric for any net at an exact size."""
    torch.manual_seed(0)
    x = _fmnist(100)
    model = reset_batchnorm(gcnn.vgg11(width=0.125, in_channels=1).double(), batches_of(x))
    _, _, closed = _twin_stats(model, x, mirror_closed=True)
    _, _, raw = _twin_stats(model, x, mirror_closed=False)
    assert max(_asymmetry(s) for s in closed.values()) < 1e-10
    assert max(_asymmetry(s) for s in raw.values()) > 1e-2  # the negative control


def test_on_real_fashion_mnist_a_planted_gcnn_is_certified_and_a_plain_cnn_is_not() -> None:
    torch.manual_seed(0)
    x = _fmnist(100)
    flip = gcnn.vgg11_flip(width=0.125, in_channels=1).double()
    planted = _permuted_export(reset_batchnorm(flip, batches_of(x)), x, 2)
    plain = reset_batchnorm(gcnn.vgg11(width=0.125, in_channels=1).double(), batches_of(x))
    verdicts = {}
    for name, model in (("planted", planted), ("plain", plain)):
        _, _, stats = _twin_stats(model, x)
        matches = match_layers(stats)
        layers = [
            LayerReport(
                name=g, channels=s.channels, involution=m.is_involution, fixed_points=0,
                two_cycles=0, longer_cycles=0, equivariance_error_before=1.0,
                equivariance_error_after=s.relative_sq_error(m.perm), weight_error_before=None,
                weight_error_after=None, decidable=m.decidable,
                equivariance_error_normalized=s.relative_sq_error(m.perm)
                / s.chance_sq_error(m.live),
            )
            for (g, m), s in zip(matches.items(), stats.values(), strict=True)
        ]  # fmt: skip
        verdicts[name] = verdict(layers)
    assert verdicts["planted"]["gcnn"] is True
    assert verdicts["planted"]["decidable_layers"] == 8
    assert verdicts["plain"]["gcnn"] is False


# --------------------------------------------------------------------------- nearest GCNN


def test_nearest_gcnn_of_a_trained_cnn_is_a_gcnn_and_not_the_cnn() -> None:
    """On a net that is *not* a GCNN the α = ½ merge with the involution-aligned twin is exactly
    equivariant and differs from the net (an "α = 0" merge would be the net itself)."""
    folder = ROOT / "models" / "vgg11-w025-fmnist-cnn"
    meta = json.loads((folder / "model.json").read_text())
    model = gcnn.create_model(
        meta["arch"], weights=folder / "model.safetensors", **meta["arch_kwargs"]
    )
    model = model.double().eval()
    x, x_test = _fmnist(200), _fmnist(32, "test")
    graph, twin, stats = _twin_stats(model, x, size=50)
    matches = match_layers(stats)
    involutions = {g: m.involution for g, m in matches.items()}
    assert any(not m.is_involution for m in matches.values()) or any(
        int((m.involution != torch.arange(len(m.involution))).sum()) for m in matches.values()
    )
    aligned = permute_model(twin, graph, involutions)
    merged = nearest_gcnn(model, graph, involutions, aligned=aligned)
    assert flip_equivariance_error(merged, x_test) < 1e-10
    assert flip_equivariance_error(model, x_test) > 1e-3  # the model itself is not a GCNN
    with torch.no_grad():
        y, y_merged = model(x_test), merged(x_test)
    assert float((y - y_merged).norm() / y.norm()) > 1e-2


# --------------------------------------------------------------------------- inexact sizes


def test_at_an_inexact_size_the_match_aligns_the_twin_that_is_merged(cifar_images) -> None:
    """ResNet18 at 64 px is not flip-exact: the twin is not the model on flipped inputs. The
    twin-consistent matching aligns the twin better, on held-out images, than the matching of
    the model's activations on flipped inputs (the old computation) does."""
    torch.manual_seed(0)
    x = F.interpolate(cifar_images, size=(64, 64), mode="bilinear")
    model = torchvision.models.resnet18(num_classes=10).double()
    model = reset_batchnorm(model, batches_of(x)).eval()
    assert not gcnn.flip_exactness(model, 64).exact
    fit, held_out = x[:12], x[12:]
    graph, twin, stats = _twin_stats(model, fit, size=12)
    nodes = probe_nodes(graph)
    probe = probe_function(MultiProbe(model, graph, nodes))
    flipped = collect_pair_statistics(
        probe, probe, batches_of(fit, size=12), flip_b=True, mirror_closed=True
    )
    by_twin = {g: m.perm for g, m in match_layers(stats, involutions=False).items()}
    by_flip = {g: m.perm for g, m in match_layers(flipped, involutions=False).items()}
    assert any(not torch.equal(by_twin[g], by_flip[g]) for g in by_twin)
    _, _, test = _twin_stats(model, held_out, size=8)

    def matched(perms: dict) -> float:
        total = 0.0
        for g, s in test.items():
            c = s.correlation()
            total += float(c[torch.arange(len(perms[g])), perms[g]].sum())
        return total

    assert matched(by_twin) > matched(by_flip)


# --------------------------------------------------------------------------- REPAIR


def test_repair_at_activations_restores_its_targets_and_is_not_a_bn_reset() -> None:
    torch.manual_seed(0)
    x = _fmnist(200)
    batches = [(x, None)]  # one batch: the estimated statistics are the data's exactly
    a = reset_batchnorm(gcnn.vgg11(width=0.25, in_channels=1).double(), batches).eval()
    b = reset_batchnorm(gcnn.vgg11(width=0.25, in_channels=1).double(), batches).eval()
    graph = analyse_graph(a, x[:1])
    nodes = sorted({n for ns in probe_nodes(graph).values() for n in ns})
    assert len(nodes) == 8  # the ReLU outputs of the 8 conv+BN+ReLU units
    ends = (
        activation_statistics(a, graph, nodes, batches),
        activation_statistics(b, graph, nodes, batches),
    )
    repaired = repair_activations(a, b, 0.5, batches, graph, ends)
    modules = dict(repaired.named_modules())
    renorms = [modules[f"repair_{k}"] for k in range(len(nodes))]  # repair_k follows sorted nodes
    assert sum(name.startswith("repair_") for name in modules) == len(nodes)
    seen: dict[int, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda mod, i, o, k=k: seen.__setitem__(k, o))
        for k, m in enumerate(renorms)
    ]
    with torch.no_grad():
        y_repaired = repaired(x)
    for h in hooks:
        h.remove()
    for k, name in enumerate(sorted(nodes)):
        out = seen[k].movedim(1, -1).reshape(-1, seen[k].shape[1])
        target_mean = torch.lerp(ends[0][name][0], ends[1][name][0], 0.5)
        target_std = torch.lerp(ends[0][name][1], ends[1][name][1], 0.5)
        # BatchNorm's running variance is the unbiased one: ≈ 1/(2n) off, n ≥ 800 samples
        torch.testing.assert_close(out.mean(0), target_mean, atol=1e-3, rtol=1e-2)
        torch.testing.assert_close(out.std(0, correction=0), target_std, atol=1e-3, rtol=1e-2)
    # the negative control: the merge without REPAIR has lost its activations' scale
    plain_stats = activation_statistics(interpolate(a, b, 0.5), graph, nodes, batches)
    deviation = max(
        float((plain_stats[n][1] / torch.lerp(ends[0][n][1], ends[1][n][1], 0.5) - 1).abs().max())
        for n in nodes
    )
    assert deviation > 0.1
    bn_reset = reset_batchnorm(interpolate(a, b, 0.5), batches)
    with torch.no_grad():
        y_reset = bn_reset(x)
    assert float((y_repaired - y_reset).norm() / y_reset.norm()) > 1e-2
    # without renormalisation layers the re-traced graph is the plain interpolation
    plain = renormalised(interpolate(a, b, 0.5), graph, {})
    with torch.no_grad():
        torch.testing.assert_close(plain(x), interpolate(a, b, 0.5)(x))


# --------------------------------------------------------------------------- statistics


def test_chance_error_is_the_mean_over_all_permutations_of_the_live_channels() -> None:
    import itertools

    g = torch.Generator().manual_seed(0)
    a = torch.randn(40, 5, 3, dtype=torch.float64, generator=g) + 1
    b = a[:, [1, 0, 2, 4, 3]] + 0.3 * torch.randn(40, 5, 3, dtype=torch.float64, generator=g)
    a[:, 2], b[:, 2] = 0.7, 0.7  # a dead channel: constant in both nets
    stats = PairStatistics(5)
    stats.update(a, b)
    dead = stats.dead()
    assert dead.tolist() == [False, False, True, False, False]
    live = [0, 1, 3, 4]
    errors = []
    for order in itertools.permutations(live):
        perm = torch.arange(5)
        perm[live] = torch.tensor(order)
        errors.append(stats.relative_sq_error(perm))
    assert stats.chance_sq_error(~dead) == pytest.approx(sum(errors) / len(errors), rel=1e-12)
    match = match_layers({"g": stats})["g"]
    assert match.perm.tolist() == [1, 0, 2, 4, 3] and match.is_involution
    assert stats.relative_sq_error(match.perm) < 0.2 * stats.chance_sq_error(~dead)
