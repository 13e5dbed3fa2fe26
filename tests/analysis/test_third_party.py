"""Issue 10's architectures end to end: groups, permutations, the twin, ``gcnn check``.

torchvision (vgg11_bn, resnet18, resnet50, mobilenet_v3_small, efficientnet_b0, densenet121),
timm (resnet50, efficientnet_b0, tf_efficientnet_b0 with TF-"same" ``Conv2dSame`` and
``BatchNormAct2d``, mobilenetv3_large_100, vgg11_bn) and a user-written module with ``Conv2d``
subclasses that pad asymmetrically with ``F.pad``. All float64, random weights, small sizes.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from gcnn.analysis import (
    ModelGraph,
    UnsupportedGraphError,
    analyse_graph,
    flipped_twin,
    permute_model,
    random_permutations,
)
from gcnn.cli import main
from gcnn.data.samples import SAMPLES_DIR
from gcnn.exactness_check import numerical_flip_check
from tests.analysis.archs import ARCHS, build

#: a flip-exact input width per architecture (checked by test_the_width_is_exact)
EXACT_WIDTH = {name: 33 for name in ARCHS} | {
    "tv_vgg11_bn": 64,  # 2×2 map before the 7×7 adaptive pool: the Linear columns matter
    "timm_vgg11_bn": 64,
    "tv_densenet121": 61,
    "custom": 37,
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@cache
def setup(name: str) -> tuple[nn.Module, ModelGraph, Tensor]:
    """(model, graph, input (2, 3, W, W) at the exact width) for ``name``."""
    model = build(name)
    width = EXACT_WIDTH[name]
    x = torch.randn(
        2, 3, width, width, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    return model, analyse_graph(model, x), x


def out(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x)


def rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("name", list(ARCHS))
def test_groups_permutations_and_twin(name: str) -> None:
    """Groups are found; permuting all of them keeps the function, permuting one conv's outputs
    alone does not (negative control); the twin is the model on mirrored images at the exact
    width and is not one pixel wider (negative control)."""
    model, graph, x = setup(name)
    assert graph.groups and graph.conv_weights
    state = model.state_dict()
    for g in graph.groups:
        for s in g.slots:
            assert state[s.key].shape[s.axis] >= s.offset + g.size * s.inner, (g.name, s)
    y = out(model, x)
    permuted = permute_model(
        model, graph, random_permutations(graph, torch.Generator().manual_seed(2))
    )
    assert rel(out(permuted, x), y) < 1e-10
    group = max(graph.groups, key=lambda g: g.size)
    broken = permute_model(model, graph, {})
    weight = next(s for s in group.slots if s.axis == 0 and s.key.endswith("weight"))
    with torch.no_grad():
        w = broken.state_dict(keep_vars=True)[weight.key]
        w.copy_(w.roll(1, 0))  # the producer alone, consumers left as they were
    assert rel(out(broken, x), y) > 1e-6

    twin = flipped_twin(model, graph)
    assert rel(out(twin, x), out(model, x.flip(-1))) < 1e-10
    # one pixel wider the twin's activations are no mirror images (some nets' random-init
    # logits hardly depend on the input, so compare every op: gcnn.exactness_check)
    wider = torch.randn(1, 3, x.shape[-2], x.shape[-1] + 1, dtype=torch.float64)
    assert numerical_flip_check(model, wider[..., :-1], twin).exact
    assert numerical_flip_check(model, wider, twin).max_error > 1e-3


def test_functional_and_same_padded_layers_are_seen() -> None:
    """timm's Conv2dSame / BatchNormAct2d and the custom module's F.conv2d / F.batch_norm calls
    are groups with their module's state-dict keys; the twin mirrors their weights."""
    pytest.importorskip("timm")
    _, graph, _ = setup("timm_tf_efficientnet_b0")
    assert "conv_stem.weight" in graph.conv_weights  # a Conv2dSame: F.pad + F.conv2d
    stem = graph.group_of("conv_stem")
    assert stem is not None and "bn1" in stem.producers  # BatchNormAct2d via F.batch_norm
    assert {s.key for s in stem.slots} >= {"conv_stem.weight", "bn1.weight", "bn1.running_var"}
    model, graph, _ = setup("custom")
    assert [g.name for g in graph.groups][:2] == ["stem+pw", "down+se_expand"]
    stream = graph.group_of("stem")
    assert stream is not None and {"stem", "pw", "dw", "bn0", "bn1"} <= set(stream.producers)
    twin = flipped_twin(model, graph)
    torch.testing.assert_close(twin.down.weight, model.down.weight.flip(-1))


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x).flatten(2).transpose(1, 2)
        return self.attn(y, y, y)[0].mean(1)


@pytest.mark.parametrize(
    ("build_model", "pattern"),
    [
        (lambda: __import__("torchvision").models.shufflenet_v2_x0_5(), r"transpose|view|reshape"),
        (lambda: __import__("torchvision").models.resnext50_32x4d(), r"groups=32"),
        (lambda: __import__("torchvision").models.regnet_y_400mf(), r"groups="),
        (_Attention, r"node transpose|MultiheadAttention"),
    ],
)
def test_unsupported_architectures_fail_fast_naming_the_node(build_model, pattern: str) -> None:
    with pytest.raises(UnsupportedGraphError, match=pattern):
        analyse_graph(build_model().eval(), torch.randn(1, 3, 33, 33))


def _check(tmp_path: Path, *args: str) -> dict:
    out_dir = tmp_path / "report"
    code = main([
        "check", *args, "--num-images", "4", "--num-eval", "4", "--batch-size", "4",
        "--alphas", "0", "0.5", "1", "--out", str(out_dir),
    ])  # fmt: skip
    assert code == 0
    return json.loads((out_dir / "report.json").read_text())


@pytest.mark.parametrize(
    ("arch", "size", "kwargs"),
    [
        # a TF port ("same" padding, (x − 0.5)/0.5 in its pretrained config): small channel
        # counts keep the matching fast
        ("timm:tf_mobilenetv3_small_minimal_100", 33, '{"num_classes": 10}'),
        ("tests.analysis.custom_net:build", 37, '{"width": 4}'),
        ("resnet18", 33, '{"num_classes": 10}'),
    ],
)
def test_gcnn_check_writes_a_report(tmp_path, arch: str, size: int, kwargs: str) -> None:
    """One command per model source, on the shipped real CIFAR-10 images (unlabelled)."""
    if arch.startswith("timm:"):
        pytest.importorskip("timm")
    report = _check(
        tmp_path, "--arch", arch, "--model-kwargs", kwargs, "--data", str(SAMPLES_DIR / "cifar10"),
        "--image-size", str(size),
    )  # fmt: skip
    assert report["exact_size"] is True and report["image_size"] == [size, size]
    assert report["model_source"]["spec"] == arch and report["labels"] == "none"
    assert report["layers"] and report["accuracy"]["model"] is None
    pre = report["preprocessing"]
    assert pre["image_size"] == size and pre["resize"] == int(size / pre["crop_pct"])
    if arch.startswith("timm:"):  # the model's own pretrained config, not ImageNet's
        assert pre["source"] == arch and pre["mean"] == [0.5, 0.5, 0.5]
    else:
        assert pre["source"] == "imagenet" and pre["mean"] == [0.485, 0.456, 0.406]


def test_docs_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The python example of docs/analysis.md's "Checking a third-party checkpoint"."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "analysis.md").read_text()
    section = doc.split("## Checking a third-party checkpoint", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "docs/analysis.md", "exec"), {})
    assert "callable True\n['stem+pw', 'down+se_expand']" in capsys.readouterr().out
