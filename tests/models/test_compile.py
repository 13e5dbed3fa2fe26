"""``torch.compile`` of the flip models gives the eager outputs and stays invariant.

The CPU test machine has 2 cores: inductor's C++ code generation takes minutes for a VGG11
(measured 157 s for ``vgg11_flip`` at width 0.125; see docs/models.md), so the suite compiles
with ``aot_eager`` (dynamo graph capture + AOTAutograd decomposition, no codegen) for VGG11 and
``eager`` (dynamo capture only) for ResNet50. Inductor runs where ``GCNN_TEST_INDUCTOR=1``.
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch
from torch import nn

import gcnn
from gcnn.exactness import FlipExactnessWarning
from gcnn.testing import assert_compiled_matches_eager, flip_equivariance_error
from tests.models.test_vgg import with_random_bn_state

INDUCTOR = os.environ.get("GCNN_TEST_INDUCTOR") == "1"


def test_compiled_vgg11_flip_matches_eager_and_is_invariant(cifar_images) -> None:
    torch.manual_seed(0)
    model = with_random_bn_state(gcnn.vgg11_flip(width=0.125)).eval()
    x = cifar_images[:2].float()
    compiled = assert_compiled_matches_eager(
        model, x, backend="inductor" if INDUCTOR else "aot_eager"
    )
    # negative control: the same compiled model at a width that breaks the rule (48: the
    # fifth max-pool sees width 3) is not invariant
    wide = nn.functional.interpolate(x, size=(32, 48), mode="bilinear")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FlipExactnessWarning)
        assert flip_equivariance_error(compiled, wide) > 1e-4


@pytest.mark.parametrize("backend", ["inductor"] if INDUCTOR else ["eager"])
def test_compiled_resnet50_flip_matches_eager_and_is_invariant(backend, cifar_images) -> None:
    torch.manual_seed(0)
    model = with_random_bn_state(gcnn.resnet50_flip(num_classes=10)).eval()
    x = nn.functional.interpolate(cifar_images[:1].float(), size=(33, 33), mode="bilinear")
    assert_compiled_matches_eager(model, x, backend=backend)


_LRU_CHILD = """
import sys, torch
from functools import lru_cache
from gcnn.nn import FlipConv2d

conv = FlipConv2d(8, 8, 3, padding=1, path="regular")  # expands its weight with _PairRows


@lru_cache
def cached_offsets(n):
    return torch.arange(n, dtype=torch.float32)


def f(x):
    y = conv(x)
    return y + cached_offsets(8).view(1, 8, 1, 1) if sys.argv[1] == "control" else y


torch.compile(f, backend="eager")(torch.randn(2, 8, 6, 6)).sum().backward()
"""


@pytest.mark.parametrize(("mode", "warns"), [("flip conv", False), ("control", True)])
def test_compiling_a_flip_conv_does_not_warn_about_lru_cache(mode: str, warns: bool) -> None:
    """Dynamo warns once per process when traced code calls an ``lru_cache`` function (it
    ignores the cache); the weight expansion's cached index is built in the graph instead, so
    ``gcnn train --compile`` logs stay clean. In a fresh process, since the warning is once per
    process. Negative control: the same compiled function calling an ``lru_cache`` helper of
    its own warns."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _LRU_CHILD, mode], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert ("lru_cache" in done.stderr) is warns, done.stderr
