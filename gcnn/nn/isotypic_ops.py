"""The hand-scheduled isotypic passes as torch custom ops, for ``torch.compile``.

Eager mode runs the passes as autograd Functions (:mod:`gcnn.nn.isotypic`,
:mod:`gcnn.nn.isotypic_gemm`). Under ``torch.compile`` the same code runs as opaque custom
ops (``gcnn::…``), each with a custom-op adjoint as its backward, so that the compiler keeps
the passes as written (its own code for the traced plain-op formulation ran ≈ 1.5× slower on
CPU) and fuses everything around them (BatchNorm, ReLU, pooling) in one graph, without graph
breaks. The Functions' static ``forward`` / ``backward`` are the op bodies; the ``ctx`` they get
here is a namespace holding what their backward reads (the geometry, the weight shape).

Custom ops take ints, not an :class:`~gcnn.nn.isotypic.IsotypicPlan`: :func:`conv_ints` packs
what the passes read (groups, kernel, stride, dilation, zero padding) and :class:`ConvInts`
unpacks it with the plan's attribute names.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, NamedTuple

import torch
from torch import Tensor

from gcnn.nn.isotypic import (
    IsotypicPlan,
    StackedPasses,
    _blocks,
    _Geometry,
    _PairPieces,
    _PairWeight,
    _ToPairs,
)
from gcnn.nn.isotypic_gemm import GemmPasses, _Im2colGeometry, _PairIm2col, _ParitiesToPairs


class ConvInts(NamedTuple):
    """The hyper-parameters the passes read, with :class:`IsotypicPlan`'s names."""

    groups: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[int, int, int, int]

    @classmethod
    def unpack(cls, ints: list[int]) -> ConvInts:
        g, kh, kw, sh, sw, dh, dw, top, bottom, left, right = ints
        return cls(g, (kh, kw), (sh, sw), (dh, dw), (top, bottom, left, right))


def conv_ints(plan: IsotypicPlan) -> list[int]:
    """``[groups, kh, kw, sh, sw, dh, dw, top, bottom, left, right]`` of ``plan``."""
    return [plan.groups, *plan.kernel_size, *plan.stride, *plan.dilation, *plan.padding]


def _ctx(**saved: object) -> SimpleNamespace:
    return SimpleNamespace(**saved)


# --- the kh × 1 weight of both parities ---


@torch.library.custom_op("gcnn::pair_weight", mutates_args=())
def pair_weight(w: Tensor) -> Tensor:
    """:class:`~gcnn.nn.isotypic._PairWeight`: ``(r_out, 2·r_l, kh, kw)`` →
    ``(2·r_out, P·r_l, kh, 1)``."""
    return _PairWeight.forward(_ctx(), w)


@pair_weight.register_fake
def _(w: Tensor) -> Tensor:
    r_out, c_in, kh, kw = w.shape
    return w.new_empty(2 * r_out, len(_blocks(kw)) * (c_in // 2), kh, 1)


@torch.library.custom_op("gcnn::pair_weight_adjoint", mutates_args=())
def pair_weight_adjoint(grad: Tensor, shape: list[int]) -> Tensor:
    return _PairWeight.backward(_ctx(shape=torch.Size(shape)), grad)


@pair_weight_adjoint.register_fake
def _(grad: Tensor, shape: list[int]) -> Tensor:
    return grad.new_empty(shape)


pair_weight.register_autograd(
    lambda ctx, grad: pair_weight_adjoint(grad, ctx.shape),
    setup_context=lambda ctx, inputs, output: setattr(ctx, "shape", list(inputs[0].shape)),
)


# --- the width-stacked input of the kh × 1 conv, and its output back to pairs ---


@torch.library.custom_op("gcnn::pair_pieces", mutates_args=())
def pair_pieces(x: Tensor, ints: list[int]) -> Tensor:
    """:class:`~gcnn.nn.isotypic._PairPieces` of ``x`` ``(B, 2R, H, W)``."""
    return _PairPieces.forward(_ctx(), x, ConvInts.unpack(ints))


@pair_pieces.register_fake
def _(x: Tensor, ints: list[int]) -> Tensor:
    geo = _Geometry(x.shape, ConvInts.unpack(ints))
    channels = 2 * len(geo.blocks) * geo.pairs
    return x.new_empty(geo.batch, channels, geo.height_out, geo.width_out)


@torch.library.custom_op("gcnn::pair_pieces_adjoint", mutates_args=())
def pair_pieces_adjoint(grad: Tensor, x: Tensor, ints: list[int]) -> Tensor:
    """The adjoint of :func:`pair_pieces` at the input ``x`` (:func:`_save_input`: only its
    shape is read)."""
    geo = _Geometry(x.shape, ConvInts.unpack(ints))
    return _PairPieces.backward(_ctx(geo=geo), grad)[0]


@pair_pieces_adjoint.register_fake
def _(grad: Tensor, x: Tensor, ints: list[int]) -> Tensor:
    return grad.new_empty(x.shape)


def _save_input(ctx: Any, inputs: tuple, output: Tensor) -> None:
    """Keep the conv's input ``x`` for the backward, whose adjoint pass reads only its shape.

    Why the tensor and not its shape: ``F.conv2d`` keeps its input for the weight gradient, so
    a ``ReLU`` before a regular conv saves nothing of its own and ``torch.compile`` recomputes
    its mask from that input in the backward. The s/d kernels' weight gradients read ``Z``,
    not ``x``; given only the shape, the partitioner kept each such ReLU's mask as a ``bool``
    tensor instead, and inductor's CPU code stores ``bool`` at ≈ 6 ns per element: compiled
    ResNet50 at batch 32 on one AVX-512 Xeon kept 6.0 M more ``bool`` elements per step than
    plain, ≈ 38 ms of a ≈ 600 ms step (benchmarks/README.md)."""
    ctx.save_for_backward(inputs[0])
    ctx.ints = inputs[1]


pair_pieces.register_autograd(
    lambda ctx, grad: (pair_pieces_adjoint(grad, ctx.saved_tensors[0], ctx.ints), None),
    setup_context=_save_input,
)


@torch.library.custom_op("gcnn::halves_to_pairs", mutates_args=())
def halves_to_pairs(y: Tensor) -> Tensor:
    """:class:`~gcnn.nn.isotypic._ToPairs`: ``[ŝ, d̂]`` → pairs ``(ŝ + d̂, ŝ − d̂)``."""
    return _ToPairs.forward(_ctx(), y)


@torch.library.custom_op("gcnn::pairs_to_halves", mutates_args=())
def pairs_to_halves(grad: Tensor) -> Tensor:
    """The adjoint of :func:`halves_to_pairs`."""
    return _ToPairs.backward(_ctx(), grad)


halves_to_pairs.register_fake(torch.empty_like)
pairs_to_halves.register_fake(torch.empty_like)
halves_to_pairs.register_autograd(lambda ctx, grad: pairs_to_halves(grad))


# --- the GEMM kernel's im2col, and its output back to pairs ---


@torch.library.custom_op("gcnn::pair_im2col", mutates_args=())
def pair_im2col(x: Tensor, ints: list[int]) -> Tensor:
    """:class:`~gcnn.nn.isotypic_gemm._PairIm2col` of ``x`` ``(B, 2R, H, W)``."""
    geo = _Im2colGeometry(x.shape, ConvInts.unpack(ints))
    return _PairIm2col.forward(_ctx(), x, geo)


@pair_im2col.register_fake
def _(x: Tensor, ints: list[int]) -> Tensor:
    geo = _Im2colGeometry(x.shape, ConvInts.unpack(ints))
    rows = len(geo.blocks) * (geo.pairs // geo.groups) * geo.kh
    return x.new_empty(2 * geo.groups, rows, geo.columns)


@torch.library.custom_op("gcnn::pair_im2col_adjoint", mutates_args=())
def pair_im2col_adjoint(grad: Tensor, x: Tensor, ints: list[int]) -> Tensor:
    """The adjoint of :func:`pair_im2col` at the input ``x`` (:func:`_save_input`: only its
    shape is read)."""
    geo = _Im2colGeometry(x.shape, ConvInts.unpack(ints))
    return _PairIm2col.backward(_ctx(geo=geo), grad)[0]


@pair_im2col_adjoint.register_fake
def _(grad: Tensor, x: Tensor, ints: list[int]) -> Tensor:
    return grad.new_empty(x.shape)


pair_im2col.register_autograd(
    lambda ctx, grad: (pair_im2col_adjoint(grad, ctx.saved_tensors[0], ctx.ints), None),
    setup_context=_save_input,
)


@torch.library.custom_op("gcnn::parities_to_pairs", mutates_args=())
def parities_to_pairs(y: Tensor, x_shape: list[int], ints: list[int]) -> Tensor:
    """:class:`~gcnn.nn.isotypic_gemm._ParitiesToPairs` of the GEMM output ``y`` of the conv
    of an input of shape ``x_shape``."""
    geo = _Im2colGeometry(torch.Size(x_shape), ConvInts.unpack(ints))
    return _ParitiesToPairs.forward(_ctx(), y, geo)


@parities_to_pairs.register_fake
def _(y: Tensor, x_shape: list[int], ints: list[int]) -> Tensor:
    geo = _Im2colGeometry(torch.Size(x_shape), ConvInts.unpack(ints))
    return y.new_empty(geo.batch, y.shape[0] * y.shape[1], geo.height_out, geo.width_out)


@torch.library.custom_op("gcnn::pairs_to_parities", mutates_args=())
def pairs_to_parities(grad: Tensor, groups: int, x_shape: list[int], ints: list[int]) -> Tensor:
    """The adjoint of :func:`parities_to_pairs`."""
    geo = _Im2colGeometry(torch.Size(x_shape), ConvInts.unpack(ints))
    return _ParitiesToPairs.backward(_ctx(geo=geo, groups=groups), grad)[0]


@pairs_to_parities.register_fake
def _(grad: Tensor, groups: int, x_shape: list[int], ints: list[int]) -> Tensor:
    geo = _Im2colGeometry(torch.Size(x_shape), ConvInts.unpack(ints))
    return grad.new_empty(2 * groups, grad.shape[1] // (2 * groups), geo.columns)


def _save_parities(ctx: object, inputs: tuple, output: Tensor) -> None:
    y, ctx.x_shape, ctx.ints = inputs  # type: ignore[attr-defined]
    ctx.groups = y.shape[0] // 2  # type: ignore[attr-defined]


parities_to_pairs.register_autograd(
    lambda ctx, grad: (pairs_to_parities(grad, ctx.groups, ctx.x_shape, ctx.ints), None, None),
    setup_context=_save_parities,
)


#: The ``kh × 1`` kernel's passes as custom ops (``regular_conv2d_eager(..., passes=…)``).
COMPILED_STACKED_PASSES = StackedPasses(
    pair_weight, lambda x, plan: pair_pieces(x, conv_ints(plan)), halves_to_pairs
)
#: The GEMM kernel's passes as custom ops (``regular_conv2d_gemm(..., passes=…)``).
COMPILED_GEMM_PASSES = GemmPasses(
    pair_weight,
    lambda x, plan: pair_im2col(x, conv_ints(plan)),
    lambda y, x_shape, plan: parities_to_pairs(y, list(x_shape), conv_ints(plan)),
)
