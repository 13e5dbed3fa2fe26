"""The isotypic (s/d basis) path of FlipConv2d computes the regular path's function.

Every test runs one module on both paths (``set_path``): same free weights, outputs and
gradients equal to float tolerance, over layouts, kernels, strides, paddings, dilations,
groups and dtypes; the plain conv is the negative control; whole models agree too.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import gcnn
from gcnn.exactness import FlipExactnessWarning
from gcnn.nn import Fields, FlipConv2d, set_conv_path
from gcnn.nn.isotypic import (
    isotypic_conv2d,
    plan_for,
    prefers_gemm,
    prefers_isotypic,
    regular_conv2d_eager,
)
from gcnn.nn.isotypic_gemm import (
    BATCH_MINOR_MAX_PIXELS,
    _Im2colGeometry,
    regular_conv2d_gemm,
)
from gcnn.testing import saved_for_backward_when_compiled
from tests.nn.field_cases import layouts

TOL = {torch.float32: 2e-5, torch.float64: 1e-11}
FAST = settings(max_examples=40, deadline=None)


@dataclass(frozen=True)
class Case:
    """One conv configuration and an input size for it."""

    in_fields: Fields
    out_fields: Fields
    groups: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] | str
    dilation: int
    padding_mode: str
    bias: bool
    height: int
    width: int
    dtype: torch.dtype

    def build(self) -> FlipConv2d:
        conv = FlipConv2d(
            self.in_fields.channels, self.out_fields.channels, self.kernel, stride=self.stride,
            padding=self.padding, dilation=self.dilation, groups=self.groups, bias=self.bias,
            padding_mode=self.padding_mode, in_type=self.in_fields, out_type=self.out_fields,
            dtype=self.dtype,
        )  # fmt: skip
        if conv.bias is not None:
            nn.init.normal_(conv.bias)  # a zero bias would hide a bias bug
        return conv

    def input(self) -> torch.Tensor:
        x = torch.randn(2, self.in_fields.channels, self.height, self.width, dtype=self.dtype)
        return x.requires_grad_()


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """Dense convs between any layouts, grouped and depthwise convs on pure layouts; kernel
    widths 1–7 (odd and even), strides, int / 'same' / 'valid' padding, all padding modes."""
    kind = draw(st.sampled_from(["dense", "dense", "grouped", "depthwise"]))
    if kind == "dense":
        in_f, out_f, groups = draw(layouts()), draw(layouts()), 1
    elif kind == "grouped":
        groups = 2
        in_f, out_f = (
            draw(st.sampled_from([Fields(trivial=2 * n), Fields(regular=2 * n)]))
            for n in (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
        )
    else:
        in_f = out_f = draw(st.sampled_from([Fields(trivial=3), Fields(regular=2)]))
        groups = in_f.channels
    kernel = (draw(st.sampled_from([1, 3])), draw(st.sampled_from([1, 2, 3, 5, 7])))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 3)))
    dilation = draw(st.integers(1, 2))
    span = [dilation * (k - 1) + 1 for k in kernel]
    padding: tuple[int, int] | str = (
        draw(st.integers(0, span[0] // 2)), draw(st.integers(0, span[1] // 2))
    )  # fmt: skip
    mode = draw(st.sampled_from(["zeros", "zeros", "reflect", "replicate", "circular"]))
    if stride == (1, 1) and mode == "zeros":
        padding = draw(st.sampled_from([padding, "same", "valid"]))
    height = span[0] + draw(st.integers(0, 3))
    width = span[1] + draw(st.integers(0, 6))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    bias = draw(st.booleans())
    return Case(
        in_f, out_f, groups, kernel, stride, padding, dilation, mode, bias, height, width, dtype
    )


def outputs_and_grads(
    conv: FlipConv2d, x: torch.Tensor, g: torch.Tensor, forward: Callable | None = None
) -> list[torch.Tensor]:
    """The output of ``forward(conv, x)`` (default ``conv(x)``) and the gradients of
    ``⟨output, g⟩`` w.r.t. ``x`` and every parameter."""
    y = conv(x) if forward is None else forward(conv, x)
    grads = torch.autograd.grad(y, [x, *conv.parameters()], g)
    return [y.detach(), *grads]


def assert_matches_regular_path(case: Case, forward: Callable) -> None:
    """``forward(conv, x)`` and its gradients equal the regular path's (float tolerance)."""
    conv = case.build()
    x = case.input()
    conv.set_path("regular")
    g = torch.randn_like(conv(x))
    expected = outputs_and_grads(conv, x, g)
    got = outputs_and_grads(conv, x, g, forward)
    tol = TOL[case.dtype]
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def _isotypic_forward(conv: FlipConv2d, x: torch.Tensor) -> torch.Tensor:
    conv.set_path("isotypic")
    return conv(x)


@FAST
@given(cases())
def test_isotypic_path_equals_regular_path_with_gradients(case: Case) -> None:
    assert_matches_regular_path(case, _isotypic_forward)


@FAST
@given(cases())
def test_the_compilable_formulation_equals_the_regular_path(case: Case) -> None:
    """:func:`isotypic_conv2d` (plain torch ops, what ``torch.compile`` traces) on every
    layout, also where eager runs the hand-scheduled kernels."""
    conv = case.build()
    x = case.input().detach()
    conv.set_path("regular")
    args = (conv.fields, conv.in_fields, conv.groups, conv.kernel_size, conv.stride)
    plan = plan_for(*args, conv.padding, conv.dilation, conv.padding_mode)
    got = isotypic_conv2d(x, conv.free_weights(), conv.bias, plan, conv.in_fields)
    tol = TOL[case.dtype]
    torch.testing.assert_close(got, conv(x), rtol=tol, atol=tol)


#: The hand-scheduled regular → regular kernels.
EAGER_KERNELS = {"kh x 1 conv": regular_conv2d_eager, "gemm": regular_conv2d_gemm}


@st.composite
def pair_cases(draw: st.DrawFn) -> Case:
    """Regular → regular convs (dense or grouped), the layouts both eager kernels run; sizes
    up to 16×16 so that windowed GEMM convs take both pixel orders (batch-minor up to
    :data:`BATCH_MINOR_MAX_PIXELS` output pixels)."""
    case = draw(cases())
    pairs_in, pairs_out = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 2]))
    return Case(
        Fields(regular=groups * pairs_in), Fields(regular=groups * pairs_out), groups,
        case.kernel, case.stride, case.padding, case.dilation, case.padding_mode, case.bias,
        case.height + draw(st.integers(0, 10)), case.width + draw(st.integers(0, 10)), case.dtype,
    )  # fmt: skip


@FAST
@given(pair_cases(), st.sampled_from(sorted(EAGER_KERNELS)))
def test_both_eager_kernels_equal_the_regular_path(case: Case, kernel: str) -> None:
    """The ``kh × 1`` conv and the GEMM kernels, each on every regular → regular conv (the
    ``"auto"`` rule picks one by size), with gradients w.r.t. the input and every parameter."""
    assert_matches_regular_path(
        case, lambda conv, x: EAGER_KERNELS[kernel](x, conv.weight, conv.bias, conv._plan())
    )


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation"),
    [((3, 3), (1, 1), (1, 1), 1), ((3, 5), (2, 1), (1, 4), 2), ((1, 3), (2, 1), (0, 1), 1)],
)
def test_kh_x_1_kernel_on_same_width_convs(
    kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int], dilation: int
) -> None:
    """Width-"same" convs without width stride (VGG's 3×3 convs among them), where the
    ``kh × 1`` kernel's backward writes the centre block instead of zeroing ``∂u`` first
    (the hypothesis cases above rarely draw them); the last case (``kh = 1`` with a height
    stride: every other row) keeps the zeroing. Float64, against the regular path."""
    case = Case(
        Fields(regular=4), Fields(regular=3), 1, kernel, stride, padding, dilation, "zeros",
        True, 9, 10, torch.float64,
    )  # fmt: skip
    assert_matches_regular_path(
        case, lambda conv, x: regular_conv2d_eager(x, conv.weight, conv.bias, conv._plan())
    )


@pytest.mark.parametrize("size", [6, 12])  # 36 and 144 output pixels
def test_the_gemm_kernel_in_both_pixel_orders(size: int) -> None:
    """A padded 3×3 conv runs batch-minor at 6×6 and batch-major at 12×12; both equal the
    regular path. Negative control: the same kernel on a non-equivariant plain filter (its
    free weights read off) differs from that filter's conv."""
    torch.manual_seed(0)
    conv = FlipConv2d(8, 6, 3, padding=1).double()
    x = torch.randn(3, 8, size, size, dtype=torch.float64)
    geometry = _Im2colGeometry(x.shape, conv._plan())
    assert geometry.batch_minor == (size * size <= BATCH_MINOR_MAX_PIXELS)
    with torch.no_grad():
        got = regular_conv2d_gemm(x, conv.weight, conv.bias, conv._plan())
        conv.set_path("regular")
        torch.testing.assert_close(got, conv(x), rtol=1e-11, atol=1e-11)
        plain = nn.init.normal_(conv.export().weight)
        forced = FlipConv2d.from_conv(conv.export(), "regular", "regular").double()
        forced.set_full_weight(plain)
        wrong = regular_conv2d_gemm(x, forced.weight, forced.bias, forced._plan())
        reference = torch.nn.functional.conv2d(x, plain, conv.full_bias(), padding=1)
        assert (wrong - reference).abs().max() > 1e-3


@settings(max_examples=15, deadline=None)
@given(cases())
def test_a_non_equivariant_filter_does_not_survive_the_decomposition(case: Case) -> None:
    """Negative control: a plain conv with random weights, read into free weights, is not
    what either path computes (the s/d blocks hold only the equivariant part); the exported
    equivariant filter is. (trivial → trivial 1-wide kernels have no constraint.)"""
    assume(case.in_fields.regular or case.out_fields.regular or case.kernel[1] > 1)
    conv = case.build()
    x = case.input().detach()
    plain = conv.export()
    nn.init.normal_(plain.weight)
    forced = FlipConv2d.from_conv(plain, conv.in_fields, conv.out_fields)
    forced.set_path("isotypic")
    with torch.no_grad():
        assert (forced(x) - plain(x)).abs().max() > 1e-3
        tol = TOL[case.dtype]
        torch.testing.assert_close(forced(x), forced.export()(x), rtol=tol, atol=tol)


def test_float32_regular_layers_of_vgg_size() -> None:
    """A realistic layer in float32: 256 → 256 channels, the sizes the "auto" rule picks."""
    torch.manual_seed(0)
    conv = FlipConv2d(256, 256, 3, padding=1)
    assert prefers_isotypic(conv._plan())
    x = torch.randn(4, 256, 8, 8)
    y_iso = conv(x)
    conv.set_path("regular")
    torch.testing.assert_close(y_iso, conv(x), rtol=1e-4, atol=1e-4)


def with_random_bn(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.normal_()
                m.bias.normal_()
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize(
    ("name", "kwargs", "size"),
    [("vgg11_flip", {"width": 0.25}, 32), ("resnet50_flip", {"num_classes": 10}, 33)],
)
def test_whole_models_agree_on_both_paths(name: str, kwargs: dict, size: int) -> None:
    """Every conv forced onto each path: eval and train-mode outputs agree (float64)."""
    torch.manual_seed(0)
    model = with_random_bn(gcnn.create_model(name, **kwargs)).double()
    x = torch.rand(2, 3, size, size, dtype=torch.float64)
    outs = {}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FlipExactnessWarning)
        for path in ("regular", "isotypic"):
            twin = set_conv_path(copy.deepcopy(model), path)
            outs[path] = (twin.eval()(x), twin.train()(x))
    for got, expected in zip(outs["isotypic"], outs["regular"], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_state_dict_and_export_do_not_depend_on_the_path() -> None:
    conv = FlipConv2d(8, 12, 3, padding=1, path="isotypic")
    other = FlipConv2d(8, 12, 3, padding=1, path="regular")
    assert conv.state_dict().keys() == other.state_dict().keys()
    other.load_state_dict(conv.state_dict())
    torch.testing.assert_close(conv.export().weight, other.export().weight, rtol=0, atol=0)


def test_path_switch_and_its_errors() -> None:
    model = gcnn.vgg11_flip(width=0.125)
    convs = [m for m in model.modules() if isinstance(m, FlipConv2d)]
    assert all(c.path == "auto" for c in convs)
    assert set_conv_path(model, "regular") is model
    assert all(c.path == "regular" for c in convs)
    with pytest.raises(ValueError, match="path must be one of"):
        set_conv_path(model, "fast")
    mixed = Fields(trivial=1, regular=1)
    depthwise = FlipConv2d(3, 3, 3, groups=3, in_type=mixed, out_type=mixed)
    with pytest.raises(ValueError, match="depthwise conv on a mixed layout"):
        depthwise.set_path("isotypic")
    assert not depthwise.runs_isotypic(torch.zeros(1, 3, 5, 5))
    with pytest.raises(ValueError, match="path='auto'"):
        set_conv_path(nn.Sequential(FlipConv2d(4, 4, 3), depthwise), "isotypic")


def test_static_rule_and_tools_see_the_regular_path() -> None:
    static = partial(FlipConv2d, path="static")
    big, small = static(256, 256, 3), static(32, 32, 3)
    x = torch.zeros(1, 256, 6, 6)
    assert big.runs_isotypic(x) and not small.runs_isotypic(torch.zeros(1, 32, 6, 6))
    assert static(256, 512, 1, stride=2).runs_isotypic(x)
    assert static(256, 512, 1).runs_isotypic(x)  # 1×1 from 2^14 multiply-adds per pixel
    assert not static(64, 64, 1).runs_isotypic(torch.zeros(1, 64, 6, 6))
    assert prefers_gemm(static(256, 512, 1)._plan())
    assert prefers_gemm(static(512, 512, 3)._plan())
    assert not prefers_gemm(big._plan())  # 256 → 256 3×3 runs as the kh × 1 conv
    assert not static(3, 256, 3, in_type="trivial").runs_isotypic(torch.zeros(1, 3, 6, 6))
    assert not big.runs_isotypic(x.to("meta"))  # the exactness tracer follows the plain conv
    auto = FlipConv2d(256, 256, 3)  # the default measures, but never on meta tensors
    assert auto.path == "auto" and not auto.runs_isotypic(x.to("meta"))


def compile_recording_ops(module: nn.Module) -> tuple[nn.Module, list[str]]:
    """``module`` compiled (one graph) by a backend that keeps the graph's op names (filled
    on the first call)."""
    captured: list[str] = []

    def record_ops(graph: torch.fx.GraphModule, example_inputs: list) -> object:
        captured.extend(str(node.target) for node in graph.graph.nodes)
        return graph.forward

    return torch.compile(module, backend=record_ops, fullgraph=True), captured


@pytest.mark.parametrize("kernel_size", [3, 1])  # the kh × 1 kernel's ops, the GEMM's ops
def test_compiled_isotypic_conv_matches_eager(kernel_size: int) -> None:
    """Under ``torch.compile`` the hand-scheduled passes run as ``gcnn::`` custom ops (one
    graph, no breaks): outputs and gradients equal eager mode's."""
    torch.manual_seed(0)
    conv = FlipConv2d(8, 8, kernel_size, padding=kernel_size // 2, path="isotypic")
    nn.init.normal_(conv.bias)
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    compiled, captured = compile_recording_ops(conv)
    y = compiled(x)
    assert any(target.startswith("gcnn.") for target in captured), captured
    g = torch.randn_like(y)
    got = [y, *torch.autograd.grad(y, [x, conv.weight, conv.bias], g)]
    y = conv(x)
    expected = [y, *torch.autograd.grad(y, [x, conv.weight, conv.bias], g)]
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@torch.library.custom_op("gcnn_test::doubled", mutates_args=())
def _doubled(x: Tensor) -> Tensor:
    """``2·x`` as an opaque op whose backward reads nothing of ``x``: how the s/d kernels'
    custom ops looked to the compiler when their adjoints were given only ``x``'s shape."""
    return 2 * x


_doubled.register_fake(lambda x: torch.empty_like(x))
_doubled.register_autograd(lambda ctx, grad: 2 * grad)


class _Doubled(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return _doubled(x)


@pytest.mark.parametrize(("kernel_size", "op"), [(3, "pair_pieces"), (1, "pair_im2col")])
def test_compiled_s_d_conv_keeps_its_input_so_no_relu_mask_is_saved(
    kernel_size: int, op: str
) -> None:
    """Like ``F.conv2d``, the s/d kernels keep their input for the backward under
    ``torch.compile``, so a ReLU before them leaves no ``bool`` mask to store (inductor's CPU
    code stores ``bool`` slowly). Negative control: a ReLU before an op whose backward does
    not read its input does leave one, so the check can fail."""
    torch.manual_seed(0)
    conv = FlipConv2d(16, 16, kernel_size, padding=kernel_size // 2, path="isotypic")
    x = torch.randn(2, 16, 6, 6, requires_grad=True)
    block = nn.Sequential(nn.ReLU(), conv)
    compiled, ops = compile_recording_ops(block)
    compiled(x)
    assert any(name.startswith(f"gcnn.{op}") for name in ops), ops
    saved = [dtype for dtype, _ in saved_for_backward_when_compiled(block, x)]
    assert saved and torch.bool not in saved, saved
    control = saved_for_backward_when_compiled(nn.Sequential(nn.ReLU(), _Doubled()), x)
    assert torch.bool in [dtype for dtype, _ in control], control
