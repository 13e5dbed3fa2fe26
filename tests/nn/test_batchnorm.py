"""FlipBatchNorm2d: pair-shared statistics, equivariance in both modes, memory format, export."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from gcnn.nn import FlipBatchNorm2d, batchnorm
from gcnn.testing import assert_flip_equivariant, flip_equivariance_error

shapes = st.tuples(st.integers(2, 4), st.integers(1, 4), st.integers(1, 5), st.integers(1, 6))
dtypes = st.sampled_from([torch.float32, torch.float64])


def randomised(bn: nn.Module) -> nn.Module:
    """Random affine parameters and running statistics, so eval mode is not the identity."""
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean"):
            getattr(bn, name).normal_()
        bn.running_var.uniform_(0.5, 2.0)
    return bn


def reference_module(bn: FlipBatchNorm2d, dtype: torch.dtype) -> nn.BatchNorm3d:
    """A BatchNorm3d with bn's parameters, buffers and mode (the ground truth's module)."""
    ref = nn.BatchNorm3d(bn.num_features, dtype=dtype)
    ref.load_state_dict(bn.state_dict())
    return ref.train(bn.training)


def reference_pair_batchnorm(
    bn: FlipBatchNorm2d, x: torch.Tensor, ref: nn.BatchNorm3d | None = None
) -> torch.Tensor:
    """Ground truth: BatchNorm3d on the (B, C/2, 2, H, W) view, with bn's parameters (or
    ``ref``, a :func:`reference_module` of bn whose gradients and statistics are read after)."""
    ref = reference_module(bn, x.dtype) if ref is None else ref
    b, c, h, w = x.shape
    return ref(x.view(b, c // 2, 2, h, w)).view(b, c, h, w)


@given(shapes, dtypes, st.booleans(), st.booleans())
def test_matches_batchnorm3d_on_pair_view(shape, dtype, train: bool, channels_last: bool) -> None:
    b, pairs, h, w = shape
    bn = randomised(FlipBatchNorm2d(2 * pairs, dtype=dtype)).train(train)
    x = torch.randn(b, 2 * pairs, h, w, dtype=dtype)
    expected = reference_pair_batchnorm(bn, x)
    xin = x.to(memory_format=torch.channels_last) if channels_last else x
    y = bn(xin)
    torch.testing.assert_close(y, expected)
    if channels_last and h * w > 1 and 2 * pairs > 1:
        assert y.is_contiguous(memory_format=torch.channels_last)


@given(shapes, dtypes, st.booleans())
def test_accelerator_layout_branch_matches_batchnorm3d(shape, dtype, train: bool) -> None:
    """The branch accelerators take for channels-last inputs (normalise the ``(B·H·W, C/2, 2)``
    view in place, :func:`~gcnn.nn.batchnorm.normalises_channels_last_in_place`), run here on
    the CPU: same outputs, gradients and running statistics as the ground truth, layout kept."""
    b, pairs, h, w = shape
    bn = randomised(FlipBatchNorm2d(2 * pairs, dtype=dtype)).train(train)
    x = torch.randn(b, 2 * pairs, h, w, dtype=dtype)
    ref = reference_module(bn, dtype)
    x_ref = x.clone().requires_grad_()
    expected = reference_pair_batchnorm(bn, x_ref, ref)
    x_cl = x.to(memory_format=torch.channels_last).requires_grad_()
    with mock.patch.object(batchnorm, "normalises_channels_last_in_place", return_value=True):
        y = bn(x_cl)
    torch.testing.assert_close(y, expected)
    grad = torch.randn_like(y)
    (y * grad).sum().backward()
    (expected * grad).sum().backward()
    torch.testing.assert_close(x_cl.grad, x_ref.grad)
    torch.testing.assert_close(bn.weight.grad, ref.weight.grad)
    torch.testing.assert_close(bn.running_var, ref.running_var)
    if h * w > 1 and pairs > 1:
        assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()


@given(shapes, dtypes, st.booleans())
def test_equivariant_in_train_and_eval_mode(shape, dtype, train: bool) -> None:
    b, pairs, h, w = shape
    bn = randomised(FlipBatchNorm2d(2 * pairs, dtype=dtype)).train(train)
    assert_flip_equivariant(bn, torch.randn(b, 2 * pairs, h, w, dtype=dtype), "regular", "regular")


@given(shapes, st.booleans())
def test_plain_batchnorm_with_per_channel_parameters_is_not_equivariant(shape, train) -> None:
    """Negative control: a BatchNorm2d whose affine parameters differ inside a pair fails.

    (Per-channel *statistics* alone commute with the pair swap, so the control needs
    per-channel parameters.)"""
    b, pairs, h, w = shape
    x = torch.randn(b, 2 * pairs, h, w, dtype=torch.float64)
    plain = randomised(nn.BatchNorm2d(2 * pairs, dtype=torch.float64)).train(train)
    assert flip_equivariance_error(plain, x, "regular", "regular") > 1e-3


@given(shapes, dtypes)
def test_export_identical_in_eval_mode(shape, dtype) -> None:
    b, pairs, h, w = shape
    bn = randomised(FlipBatchNorm2d(2 * pairs, dtype=dtype)).eval()
    x = torch.randn(b, 2 * pairs, h, w, dtype=dtype)
    plain = bn.export()
    assert type(plain) is nn.BatchNorm2d and not plain.training
    torch.testing.assert_close(plain(x), bn(x))


@given(shapes)
def test_export_identical_in_train_mode_on_flip_closed_batches(shape) -> None:
    b, pairs, h, w = shape
    bn = randomised(FlipBatchNorm2d(2 * pairs, dtype=torch.float64)).train()
    x = torch.randn(b, 2 * pairs, h, w, dtype=torch.float64)
    from gcnn.nn import flip_action

    closed = torch.cat([x, flip_action(x, "regular")])
    plain = bn.export()
    assert plain.training
    var_before = bn.running_var.repeat_interleave(2).clone()
    torch.testing.assert_close(plain(closed), bn(closed))
    torch.testing.assert_close(plain.running_mean, bn.running_mean.repeat_interleave(2))
    # Running variances differ only by Bessel's correction: n = B·H·W samples per channel
    # for the plain BatchNorm, 2n per pair for the flip one.
    n, m = closed.shape[0] * h * w, bn.momentum
    biased_plain = (plain.running_var - (1 - m) * var_before) / m * (n - 1) / n
    biased_flip = (bn.running_var.repeat_interleave(2) - (1 - m) * var_before) / m
    torch.testing.assert_close(biased_plain, biased_flip * (2 * n - 1) / (2 * n))


def test_parameters_are_shared_in_pairs() -> None:
    bn = FlipBatchNorm2d(8)
    assert bn.weight.shape == bn.running_mean.shape == (4,)
    assert bn.export().weight.shape == (8,)


def test_odd_channels_are_rejected() -> None:
    with pytest.raises(ValueError, match="even number of channels"):
        FlipBatchNorm2d(3)
    with pytest.raises(ValueError, match="expected 4 channels"):
        FlipBatchNorm2d(4)(torch.randn(2, 6, 3, 3))


def _autograd_nodes(t: torch.Tensor) -> set[str]:
    seen, stack = set(), [t.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack += [n for n, _ in node.next_functions]
    return {type(n).__name__ for n in seen}


@given(shapes, st.booleans())
def test_inplace_relu_after_batchnorm_gives_the_right_gradients(shape, channels_last) -> None:
    """Models apply ``ReLU(inplace=True)`` to the output: gradients must equal the
    out-of-place ReLU's, and the output must not be an autograd view (an in-place op on a
    view adds a ``CopySlices`` node, two extra passes over the gradient). Negative control:
    the same in-place ReLU on a view of BatchNorm3d's output does add ``CopySlices``."""
    b, pairs, h, w = shape
    bn = randomised(FlipBatchNorm2d(2 * pairs)).train()
    x = torch.randn(b, 2 * pairs, h, w)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    grads = []
    for inplace in (True, False):
        xi = x.clone().requires_grad_()
        y = bn(xi)
        y = torch.relu_(y) if inplace else torch.relu(y)
        if inplace:
            assert "CopySlices" not in _autograd_nodes(y)
        y.backward(torch.ones_like(y))
        grads.append(xi.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
    xr = x.clone().requires_grad_()
    assert "CopySlices" in _autograd_nodes(torch.relu_(reference_pair_batchnorm(bn, xr)))


@pytest.mark.parametrize(
    ("momentum", "backend"), [(0.1, "aot_eager"), (None, "aot_eager"), (0.1, "inductor")]
)
def test_compiled_train_mode_uses_pair_statistics_from_channel_statistics(
    momentum, backend
) -> None:
    """Under ``torch.compile`` train-mode pair statistics come from per-channel ones
    (``μ = (m_a + m_b)/2``, ``σ² = (v_a + v_b)/2 + ((m_a − m_b)/2)²``): outputs, gradients and
    running statistics equal eager mode's over two steps. Negative control: per-channel
    statistics (plain BatchNorm2d with the same parameters) give another output."""
    torch.manual_seed(0)
    bn = FlipBatchNorm2d(8, momentum=momentum).double()
    with torch.no_grad():
        bn.weight.normal_()
        bn.bias.normal_()
    twin = FlipBatchNorm2d(8, momentum=momentum).double()
    twin.load_state_dict(bn.state_dict())
    compiled = torch.compile(twin, backend=backend, fullgraph=True)
    for _ in range(2):
        x = torch.randn(4, 8, 5, 6, dtype=torch.float64, requires_grad=True)
        y = bn(x)
        g = torch.randn_like(y)
        expected = [y, *torch.autograd.grad(y, [x, bn.weight, bn.bias], g)]
        y = compiled(x)
        got = [y, *torch.autograd.grad(y, [x, twin.weight, twin.bias], g)]
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(twin, name), getattr(bn, name), rtol=1e-12, atol=0)
    plain = bn.export().train()
    assert (plain(x) - bn(x)).abs().max() > 1e-2


@pytest.mark.parametrize(
    ("backend", "param_dtype"),
    [("aot_eager", torch.float32), ("inductor", torch.float32), ("aot_eager", torch.bfloat16)],
)
def test_compiled_train_mode_on_bf16_inputs_matches_eager(backend, param_dtype) -> None:
    """bf16 activations (what autocast hands BatchNorm) under ``torch.compile``, with float32
    parameters (autocast) or a model cast to bf16: one graph, eager mode's output dtype,
    outputs and gradients within bf16 rounding of eager's, running statistics accumulated
    in float32 and within float32 rounding of eager's (computed from the same bf16 inputs).
    Negative control: per-channel statistics are further off than the tolerance."""
    torch.manual_seed(0)
    bn = randomised(FlipBatchNorm2d(8)).train().to(param_dtype)
    twin = FlipBatchNorm2d(8).train().to(param_dtype)
    twin.load_state_dict(bn.state_dict())
    compiled = torch.compile(twin, backend=backend, fullgraph=True)
    x = (2 + 3 * torch.randn(4, 8, 5, 6)).bfloat16().requires_grad_()
    params = [bn.weight, bn.bias]
    y = bn(x)
    g = torch.randn_like(y)
    expected = [y, *torch.autograd.grad(y, [x, *params], g)]
    y = compiled(x)
    got = [y, *torch.autograd.grad(y, [x, twin.weight, twin.bias], g)]
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2)
    stats_tol = 1e-2 if param_dtype == torch.bfloat16 else 1e-5
    for name in ("running_mean", "running_var"):
        torch.testing.assert_close(
            getattr(twin, name), getattr(bn, name), rtol=stats_tol, atol=stats_tol
        )
    plain = bn.export().train()
    with torch.no_grad():
        assert (plain(x).float() - bn(x).float()).abs().max() > 0.1
