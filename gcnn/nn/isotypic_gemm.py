r"""The eager isotypic path of regular → regular flip convs as one batched GEMM.

The s/d algebra is that of :mod:`gcnn.nn.isotypic`: parity ``E`` (outputs ``ŝ``) reads
``(s, Σ_c s, Δ_c d)``, parity ``O`` (outputs ``d̂``) reads ``(d, Σ_c d, Δ_c s)``, each through a
``kh × 1`` kernel (:class:`~gcnn.nn.isotypic._PairWeight`), half the multiply-adds of the plain
conv. Here the ``kh`` kernel rows are unrolled as well (an im2col of the stacked input), so the
whole conv is one ``torch.baddbmm`` over ``2·G`` matrices (parity × group)::

    Y[p, g] = W[p, g] @ Z[p, g]     W: (r_out/G, P·r_l·kh),  Z: (P·r_l·kh, B·H'·W')

with ``P = kw`` stacked blocks (:func:`~gcnn.nn.isotypic._blocks`) and ``r_l = R/G`` input
pairs per group. The im2col costs a 9× copy of the input (3×3), so this pays where the
GEMM is large next to it: 1×1 convs (no im2col, and 1×1 grouped convs are slow in oneDNN on
CPU) and 3×3 convs with many channels (:data:`~gcnn.nn.isotypic.GEMM_MIN_MACS`,
benchmarks/README.md).

Layouts: the input ``x`` ``(B, 2R, H, W)`` (pairs interleaved, channels first) is turned once
into the zero-padded s/d buffer ``u`` ``[s, d]`` (parity-major, the pairs' channels outside the
pixels: the layout the GEMM wants), ``Z`` holds rows ``(2, G, P, r_l, kh)`` and ``Y`` rows
``(2, G, r_out/G)``, and ``Y`` is turned back into pairs ``(B, r_out, 2, H', W')`` with
``a' = ŝ + d̂``, ``b' = ŝ − d̂``. The pixels of ``u``, ``Z`` and ``Y`` are stored as
``(B, H, W)``, or as ``(H, W, B)`` for windowed convs with small outputs
(:data:`BATCH_MINOR_MAX_PIXELS`). Each pass is a hand-written autograd Function whose
backward is the adjoint map, written as the same passes in reverse.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from gcnn.nn.isotypic import IsotypicPlan, _blocks, _PairWeight, add_block_adjoint, write_block
from gcnn.nn.precision import accumulation_dtype

#: Windowed convs (kernel > 1×1 or padded) whose output has at most this many pixels per image
#: keep the batch as the innermost (fastest) dimension of ``u``, ``Z`` and ``Y``: the window
#: passes then copy runs of ``W'·B`` numbers instead of ``W'`` (at 2×2 / 4×4 outputs the
#: whole conv ran 1.7× / 1.1× faster; at 8×8 the two layouts tie). Unpadded 1×1 convs and
#: larger outputs keep ``(B, H, W)``, where the transposing s/d pass reads runs of ``H·W``.
BATCH_MINOR_MAX_PIXELS = 64


class _Im2colGeometry:
    """Shapes and layout of one conv's :class:`_PairIm2col` (``x`` after any ``padding_mode``
    pad). Tensors are allocated in the chosen pixel order and handled through *logical* views
    whose last three dimensions are always ``(B, H, W)``."""

    def __init__(self, x_shape: torch.Size, plan: IsotypicPlan) -> None:
        self.batch, channels, self.height, self.width = x_shape
        self.pairs = channels // 2
        self.groups = plan.groups
        self.kh, self.kw = plan.kernel_size
        self.dh, self.dw = plan.dilation
        self.sh, self.sw = plan.stride
        self.top, self.bottom, self.left, self.right = plan.padding
        padded_h = self.height + self.top + self.bottom
        padded_w = self.width + self.left + self.right
        self.height_out = (padded_h - self.dh * (self.kh - 1) - 1) // self.sh + 1
        self.width_out = (padded_w - self.dw * (self.kw - 1) - 1) // self.sw + 1
        self.padded = (padded_h, padded_w)
        self.blocks = _blocks(self.kw)
        #: a 1×1 kernel without padding reads ``s`` / ``d`` at strided pixels: no buffer ``u``
        self.direct = self.kh == self.kw == 1 and not any(plan.padding)
        pixels = self.height_out * self.width_out
        self.batch_minor = not self.direct and pixels <= BATCH_MINOR_MAX_PIXELS

    @property
    def columns(self) -> int:
        """``N = B·H'·W'``: the GEMM's column count."""
        return self.batch * self.height_out * self.width_out

    def new(
        self,
        like: Tensor,
        lead: tuple[int, ...],
        size: tuple[int, int],
        zeros: bool = False,
        dtype: torch.dtype | None = None,
    ) -> tuple[Tensor, Tensor]:
        """A fresh ``(*lead, B, h, w)`` tensor in this conv's pixel order: ``(storage,
        logical view)``; ``storage`` is contiguous (``(*lead, h, w, B)`` when batch-minor)."""
        pixels = (*size, self.batch) if self.batch_minor else (self.batch, *size)
        storage = (like.new_zeros if zeros else like.new_empty)((*lead, *pixels), dtype=dtype)
        return storage, self.logical(storage)

    def logical(self, storage: Tensor) -> Tensor:
        """The ``(…, B, h, w)`` view of a tensor stored in this conv's pixel order."""
        return storage.movedim(-1, -3) if self.batch_minor else storage

    def z_lead(self) -> tuple[int, ...]:
        """``(2, G, P, r_l, kh)``: the GEMM rows of ``Z`` in order."""
        return (2, self.groups, len(self.blocks), self.pairs // self.groups, self.kh)

    def window(self, u: Tensor, row: int, col: int) -> Tensor:
        """The pixels kernel tap ``(row, col)`` reads: ``u[..., row·dh + i·sh, col·dw + j·sw]``
        for output pixel ``(i, j)``, as ``(2, G, r_l, B, H', W')``."""
        h0, w0 = row * self.dh, col * self.dw
        h1 = h0 + (self.height_out - 1) * self.sh + 1
        w1 = w0 + (self.width_out - 1) * self.sw + 1
        return u[..., h0 : h1 : self.sh, w0 : w1 : self.sw].unflatten(1, (self.groups, -1))

    def interior(self, u: Tensor) -> Tensor:
        """The unpadded pixels ``(2, R, B, H, W)`` of the buffer ``u``."""
        return u[..., self.top : self.top + self.height, self.left : self.left + self.width]

    def pairs_view(self, x: Tensor) -> Tensor:
        """``x`` ``(B, 2R, H, W)`` as ``(2, R, B, H, W)`` (a strided view: ``[a, b]``)."""
        b, _, h, w = x.shape
        return x.contiguous().view(b, self.pairs, 2, h, w).permute(2, 1, 0, 3, 4)


class _PairIm2col(torch.autograd.Function):
    """``x`` ``(B, 2R, H, W)`` → ``Z`` ``(2G, P·r_l·kh, N)``: for parity ``E`` the blocks
    ``(s, Σ_c s, Δ_c d)``, for ``O`` ``(d, Σ_c d, Δ_c s)``, each at the ``kh`` kernel rows
    (zero padding included); ``N`` runs over the output pixels in the geometry's order. One
    pass builds ``u = [s, d]``, then one pass per (block, kernel row) writes both parities.
    The backward is the adjoint: the same windows accumulated into ``∂u``, then
    ``∂x = (∂s + ∂d, ∂s − ∂d)``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, geo: _Im2colGeometry) -> Tensor:  # type: ignore[override]
        ctx.geo = geo
        ab = geo.pairs_view(x)
        size_out = (geo.height_out, geo.width_out)
        z_storage, z = geo.new(x, geo.z_lead(), size_out)
        if geo.direct:
            rows = ab[..., :: geo.sh, :: geo.sw]
            flat = z.flatten(1, 4)
            torch.add(rows[0], rows[1], out=flat[0])
            torch.sub(rows[0], rows[1], out=flat[1])
            return z_storage.view(2 * geo.groups, -1, geo.columns)
        _, u = geo.new(x, (2, geo.pairs), geo.padded, zeros=True)
        inner = geo.interior(u)
        torch.add(ab[0], ab[1], out=inner[0])
        torch.sub(ab[0], ab[1], out=inner[1])
        for p, (symmetric, c, c2) in enumerate(geo.blocks):
            for row in range(geo.kh):
                left, right = geo.window(u, row, c), geo.window(u, row, c2)
                write_block(z[:, :, p, :, row], left, right, symmetric, c == c2, parity=0)
        return z_storage.view(2 * geo.groups, -1, geo.columns)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        geo = ctx.geo
        size_out = (geo.height_out, geo.width_out)
        pixels = (*size_out, geo.batch) if geo.batch_minor else (geo.batch, *size_out)
        g = geo.logical(grad.contiguous().view(*geo.z_lead(), *pixels))
        gx = grad.new_empty(geo.batch, geo.pairs, 2, geo.height, geo.width)
        gab = gx.permute(2, 1, 0, 3, 4)
        if geo.direct:
            flat = g.flatten(1, 4)
            if geo.sh != 1 or geo.sw != 1:
                gx.zero_()
            target = gab[..., :: geo.sh, :: geo.sw]
            torch.add(flat[0], flat[1], out=target[0])
            torch.sub(flat[0], flat[1], out=target[1])
            return gx.flatten(1, 2), None
        # bf16 / fp16 gradients: the kh·kw overlapping windows summed in float32, rounded once
        acc = accumulation_dtype(grad)
        _, gu = geo.new(grad, (2, geo.pairs), geo.padded, zeros=True, dtype=acc)
        for p, (symmetric, c, c2) in enumerate(geo.blocks):
            for row in range(geo.kh):
                left, right = geo.window(gu, row, c), geo.window(gu, row, c2)
                add_block_adjoint(g[:, :, p, :, row], left, right, symmetric, c == c2, parity=0)
        inner = geo.interior(gu)
        torch.add(inner[0], inner[1], out=gab[0])
        torch.sub(inner[0], inner[1], out=gab[1])
        return gx.flatten(1, 2), None


class _ParitiesToPairs(torch.autograd.Function):
    """``Y`` ``(2G, r_out/G, N)`` = ``[ŝ, d̂]`` (pixels in the geometry's order) → pairs
    ``(ŝ + d̂, ŝ − d̂)`` as ``(B, 2·r_out, H', W')`` channels first; the map is its own
    adjoint up to the layouts."""

    @staticmethod
    def forward(ctx: Any, y: Tensor, geo: _Im2colGeometry) -> Tensor:  # type: ignore[override]
        ctx.geo, ctx.groups = geo, y.shape[0] // 2
        size = (geo.height_out, geo.width_out)
        pixels = (*size, geo.batch) if geo.batch_minor else (geo.batch, *size)
        parities = geo.logical(y.view(2, -1, *pixels))
        # ``out`` is returned itself, not a view: callers may apply ReLU in place.
        out = y.new_empty(geo.batch, 2 * parities.shape[1], *size)
        ab = out.view(geo.batch, -1, 2, *size).permute(2, 1, 0, 3, 4)
        torch.add(parities[0], parities[1], out=ab[0])
        torch.sub(parities[0], parities[1], out=ab[1])
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        geo = ctx.geo
        size = (geo.height_out, geo.width_out)
        ab = grad.contiguous().view(geo.batch, -1, 2, *size).permute(2, 1, 0, 3, 4)
        storage, gy = geo.new(grad, (2, ab.shape[1]), size)
        torch.add(ab[0], ab[1], out=gy[0])
        torch.sub(ab[0], ab[1], out=gy[1])
        return storage.view(2 * ctx.groups, -1, geo.columns), None


class GemmPasses(NamedTuple):
    """The passes :func:`regular_conv2d_gemm` runs around its GEMM: autograd Functions in
    eager mode (:data:`EAGER_GEMM_PASSES`), custom ops under ``torch.compile``
    (:data:`gcnn.nn.isotypic_ops.COMPILED_GEMM_PASSES`). ``im2col(x, plan)`` → ``Z``;
    ``to_pairs(Y, x_shape, plan)`` → the output pairs."""

    weight: Callable[[Tensor], Tensor]
    im2col: Callable[[Tensor, IsotypicPlan], Tensor]
    to_pairs: Callable[[Tensor, torch.Size, IsotypicPlan], Tensor]


EAGER_GEMM_PASSES = GemmPasses(
    _PairWeight.apply,
    lambda x, plan: _PairIm2col.apply(x, _Im2colGeometry(x.shape, plan)),
    lambda y, x_shape, plan: _ParitiesToPairs.apply(y, _Im2colGeometry(x_shape, plan)),
)


def regular_conv2d_gemm(
    x: Tensor,
    w: Tensor,
    bias: Tensor | None,
    plan: IsotypicPlan,
    passes: GemmPasses = EAGER_GEMM_PASSES,
) -> Tensor:
    """The regular → regular flip conv of ``x`` ``(B, 2R, H, W)`` in the s/d basis as one
    batched GEMM. ``w``: free pairs ``(r_out, 2·r_l, kh, kw)``, ``bias``: ``(r_out,)``.
    Returns ``(B, 2·r_out, H', W')`` channels first, equal to ``F.conv2d`` with the full weight
    to float rounding."""
    if plan.padding_mode != "zeros":
        top, bottom, left, right = plan.mode_padding
        x = F.pad(x, (left, right, top, bottom), mode=plan.padding_mode)
    z = passes.im2col(x, plan)
    r_out, groups = w.shape[0], plan.groups
    weight = passes.weight(w).view(2 * groups, r_out // groups, -1)
    if bias is None:
        y = torch.bmm(weight, z)
    else:
        both = torch.cat((bias, torch.zeros_like(bias))).view(2 * groups, -1, 1)
        y = torch.baddbmm(both, weight, z)
    return passes.to_pairs(y, x.shape, plan)
