"""What GPU training runs — bf16 autocast, channels-last — on every device this machine has.

``gcnn train`` and the GPU benchmarks run the flip models under ``torch.autocast(bfloat16)``
with channels-last inputs. These tests run that configuration on the CPU everywhere (CPU
autocast takes the same autograd Functions and casts ``F.conv2d`` the same way) and on CUDA
too where a GPU is present, so a GPU session finds the code already checked.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

import gcnn
from gcnn import FlipExactnessWarning
from gcnn.nn import FlipConv2d, set_conv_path
from gcnn.nn.isotypic import regular_conv2d_eager
from gcnn.nn.isotypic_gemm import regular_conv2d_gemm
from gcnn.testing import TOLERANCES, flip_equivariance_error

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

#: name → the conv's forward on that kernel (``conv``, ``x``) → output
KERNELS: dict[str, Callable[[FlipConv2d, Tensor], Tensor]] = {
    "regular": lambda conv, x: conv(x),  # the convs below are built on path="regular"
    "kh_x_1": lambda conv, x: regular_conv2d_eager(x, conv.weight, conv.bias, conv._plan()),
    "gemm": lambda conv, x: regular_conv2d_gemm(x, conv.weight, conv.bias, conv._plan()),
}

#: (in, out, kernel, stride, input size, channels-last input)
LAYERS = [
    (64, 64, 3, 1, 8, True),
    (32, 96, 3, 2, 9, False),
    (128, 64, 1, 1, 6, True),
    (16, 16, 5, 1, 7, False),
]


def _relative_error(got: Tensor, truth: Tensor) -> float:
    return float((got.detach().double() - truth).norm() / truth.norm())


def _bf16_errors(
    conv: FlipConv2d, x: Tensor, grad: Tensor, truth: tuple[Tensor, ...], kernel: str
) -> list[float]:
    """Relative errors of the output, ``∂x`` and ``∂w`` of one kernel under bf16 autocast."""
    conv.zero_grad()
    x = x.detach().clone().requires_grad_()
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        y = KERNELS[kernel](conv, x)
    assert y.dtype == torch.bfloat16  # as F.conv2d's output under autocast
    (y.float() * grad).sum().backward()
    assert x.grad.dtype == x.dtype and conv.weight.grad.dtype == torch.float32  # fp32 weights
    got = (y, x.grad, conv.weight.grad)
    return [_relative_error(t, r) for t, r in zip(got, truth, strict=True)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32_in", "bf16_in"])
@pytest.mark.parametrize("layer", LAYERS, ids=lambda case: "x".join(map(str, case[:5])))
def test_s_d_kernels_are_about_as_accurate_as_the_regular_path_in_bf16(
    device: str, dtype: torch.dtype, layer
) -> None:
    """Each s/d kernel under bf16 autocast lands within 2× the regular path's distance from the
    float64 truth, for the output and both gradients, on float32 inputs (a first layer) and
    bf16 ones (what a BatchNorm hands on under autocast). It rounds twice more than
    ``F.conv2d`` (its bf16 input in the s/d basis, its output back to pairs): ≈ √3× on
    independent roundings; the adjoints' sums of overlapping windows accumulate in float32
    (summed in bf16, the GEMM kernel's ``∂x`` was 3× off). A kernel on the wrong weight (the
    control) is far off."""
    c_in, c_out, k, stride, size, channels_last = layer
    torch.manual_seed(0)
    geometry = {"stride": stride, "padding": k // 2, "path": "regular"}
    conv = FlipConv2d(c_in, c_out, k, **geometry).to(device)
    x = torch.randn(4, c_in, size, size, device=device).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    grad = torch.randn_like(conv(x.float()))
    exact = FlipConv2d(c_in, c_out, k, **geometry).double().to(device)
    exact.load_state_dict(conv.state_dict())
    x64 = x.double().requires_grad_()
    y64 = exact(x64)
    (y64 * grad.double()).sum().backward()
    truth = (y64.detach(), x64.grad, exact.weight.grad)
    regular = _bf16_errors(conv, x, grad, truth, "regular")
    assert max(regular) < 1e-2
    for kernel in ("kh_x_1", "gemm"):
        errors = _bf16_errors(conv, x, grad, truth, kernel)
        for error, reference in zip(errors, regular, strict=True):
            assert error <= 2 * reference, (kernel, errors, regular)
    with torch.no_grad():
        conv.weight.add_(1e-1 * torch.randn_like(conv.weight))
    assert _bf16_errors(conv, x, grad, truth, "kh_x_1")[0] > 1e-2  # the control


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_flip_vgg11_is_invariant_under_bf16_autocast(device: str, train: bool) -> None:
    """``vgg11_flip`` on channels-last inputs under bf16 autocast, on each conv path: logits
    invariant to the flip within bf16's tolerance; the plain ``vgg11`` (control) is not."""
    x = torch.rand(8, 3, 32, 32, device=device).to(memory_format=torch.channels_last)

    def error(name: str, path: str | None) -> float:
        torch.manual_seed(0)
        model = gcnn.create_model(name, num_classes=10, width=0.25).to(device).train(train)
        if path is not None:
            set_conv_path(model, path)
        model = model.to(memory_format=torch.channels_last)
        with torch.autocast(device, dtype=torch.bfloat16), warnings.catch_warnings():
            warnings.simplefilter("ignore", FlipExactnessWarning)
            return flip_equivariance_error(model, x)

    tol = TOLERANCES[torch.bfloat16]
    for path in ("regular", "isotypic", "auto"):
        assert error("vgg11_flip", path) < tol, path
    assert error("vgg11", None) > tol
