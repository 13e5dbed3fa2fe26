r"""The isotypic fast path of :class:`~gcnn.nn.FlipConv2d`: the same conv in the s/d basis.

For a regular pair ``(a, b)`` (channels ``t + 2k, t + 2k + 1``) let ``s = a + b`` and
``d = a − b``. The flip fixes ``s`` and negates ``d`` (up to the mirror), so a flip-equivariant
conv splits into four blocks: ``s → s`` and ``d → d`` with mirror-symmetric kernels,
``d → s`` and ``s → d`` with mirror-antisymmetric ones. Trivial channels behave like ``s``.

**The blocks.** Write ``e = [τ, s]`` (the *even* inputs: trivial channels, then pair sums) and
``o = d`` (the *odd* inputs). An output pair row with free weight ``w`` (``T`` on the trivial
columns, ``P`` / ``Q`` on the ``a`` / ``b`` columns of the input pairs) gives
``a' = G_e * e + G_o * o`` with ``G_e = [T, (P + Q)/2]``, ``G_o = (P − Q)/2``, and its partner
``b' = F G_e * e − F G_o * o`` (``F`` mirrors the kernel width). So the half-sum and
half-difference outputs ``ŝ = (a' + b')/2``, ``d̂ = (a' − b')/2`` are

    ``ŝ = ½(G_e + F G_e) * e + ½(G_o − F G_o) * o``,
    ``d̂ = ½(G_e − F G_e) * e + ½(G_o + F G_o) * o``.

A trivial output row has the same form as ``ŝ`` with ``G_e = [S, u]``, ``G_o = u`` (``S`` its
mirror-symmetric kernels on trivial inputs, ``u`` the free columns of the input pairs). Hence
*even* outputs ``[τ', ŝ]`` read ``e`` through symmetric and ``o`` through antisymmetric
kernels; *odd* outputs ``d̂`` read ``o`` symmetrically and ``e`` antisymmetrically.

**Half the multiply-adds.** A symmetric kernel ``K`` (``K_c = K_{kw−1−c}``, column ``c`` of
width ``kw``) applied to ``u`` needs column ``c`` once for the tensor
``Σ_c u = u(·+c) + u(·+kw−1−c)`` (shifts of ``c·dilation`` in the padded width), an
antisymmetric one the difference ``Δ_c u``, and the centre column ``u`` itself. So a
``kh × kw`` conv becomes a ``kh × 1`` conv on ``kw`` stacked half-width inputs,
``[u, Σ_0 u, …, Δ_0 v, …]`` (:func:`stacked_input`), with the weight of :func:`stacked_weight`:
for 3×3, ``ŝ = conv3x1([s, Σ s, Δ d])`` and ``d̂ = conv3x1([d, Σ d, Δ s])``, half the MACs of
the plain conv. 1×1 convs are block diagonal (``e → even``, ``o → odd``). The width stride
is applied when the shifted columns are taken, so the ``kh × 1`` conv has stride ``(sh, 1)``.

Pure regular layouts run both parities as one conv with ``2·groups`` groups. Outputs go back
to pairs as ``a' = ŝ + d̂``, ``b' = ŝ − d̂``. The pair bias ``β`` adds ``β`` to ``ŝ``.
This is exact algebra (any input size, no exactness rule involved): the outputs equal
``F.conv2d`` with the full weight to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from gcnn.nn.expansion import ConvFields, FreeWeights, mirror_symmetric
from gcnn.nn.fields import Fields
from gcnn.nn.precision import accumulation_dtype

#: ``(top, bottom, left, right)`` zero padding.
Padding4 = tuple[int, int, int, int]

#: How :class:`~gcnn.nn.FlipConv2d` computes its forward (see :func:`prefers_isotypic`).
ConvPath = Literal["auto", "static", "isotypic", "regular"]
CONV_PATHS: tuple[str, ...] = ("auto", "static", "isotypic", "regular")


def check_conv_path(path: object) -> ConvPath:
    """Return ``path`` if it is one of :data:`CONV_PATHS`, else raise ``ValueError``."""
    if path not in CONV_PATHS:
        raise ValueError(f"path must be one of {CONV_PATHS}, got {path!r}")
    return path  # type: ignore[return-value]


@dataclass(frozen=True)
class IsotypicPlan:
    """Static shape information of one conv in the s/d basis.

    ``fields`` / ``groups``: the structure the s/d conv sees (a depthwise conv on pairs is
    rewritten as a grouped conv with one pair per group, see :func:`plan_for`). ``padding``:
    the zero padding ``(top, bottom, left, right)`` after any non-zero ``padding_mode`` pad.
    """

    fields: ConvFields
    groups: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: Padding4
    padding_mode: str
    mode_padding: Padding4
    depthwise_pairs: bool

    @property
    def fused(self) -> bool:
        """Both parities in one conv: only pairs in and out (``2·groups`` groups)."""
        return self.fields.local_in.is_regular and self.fields.out.is_regular

    @property
    def eager_pairs(self) -> bool:
        """The hand-scheduled eager kernels apply: pairs in and out, not depthwise."""
        return self.fused and not self.depthwise_pairs


#: ``"auto"`` takes the isotypic path for convs with a ≥ 3 wide kernel from this many
#: multiply-adds per output pixel of the plain conv (``c_in/groups · c_out · kh · kw``),
#: measured on a 2-core x86 CPU (fp32, batch 32 and 128, forward + backward,
#: benchmarks/README.md): 3×3 convs from 128→256 channels up win (1.1–1.7×); smaller ones
#: lose (0.45–0.98× at 16–128 channels: the basis changes are memory-bound and cost per
#: channel, the saving per channel pair).
AUTO_MIN_MACS = 2**18
#: 1×1 convs take the isotypic path (as one GEMM) from this many multiply-adds per pixel:
#: 1.06–2.1× from 64→256 / 128→128 up, 2.5–5.4× strided; 0.74–0.89× at 64→64 and 128→32.
AUTO_MIN_MACS_1X1 = 2**14
#: From this many multiply-adds per pixel a ≥ 3 wide kernel runs as one GEMM on its full
#: im2col (:mod:`gcnn.nn.isotypic_gemm`) rather than as a ``kh × 1`` conv on the width-stacked
#: input: at 256→512 and 512→512 (3×3) the GEMM is 1.4–1.7× the regular path, the
#: ``kh × 1`` conv 1.2–1.35×; at 256→256 and below the GEMM's 9× im2col costs more than it
#: saves (0.9–1.15× against 1.2–1.4×).
GEMM_MIN_MACS = 2**20


def macs_per_pixel(plan: IsotypicPlan) -> int:
    kh, kw = plan.kernel_size
    return plan.fields.local_in.channels * plan.fields.out.channels * plan.groups * kh * kw


def prefers_isotypic(plan: IsotypicPlan) -> bool:
    """The ``"auto"`` rule (no timing at run time): regular → regular convs (not depthwise),
    1×1 kernels with at least :data:`AUTO_MIN_MACS_1X1` multiply-adds per output pixel and
    ≥ 3 wide kernels with at least :data:`AUTO_MIN_MACS`."""
    if not plan.eager_pairs:
        return False
    kh, kw = plan.kernel_size
    if kh == kw == 1:
        return macs_per_pixel(plan) >= AUTO_MIN_MACS_1X1
    return kw >= 3 and macs_per_pixel(plan) >= AUTO_MIN_MACS


def prefers_gemm(plan: IsotypicPlan) -> bool:
    """Which eager kernel runs a regular → regular conv on the isotypic path: one GEMM
    (:func:`gcnn.nn.isotypic_gemm.regular_conv2d_gemm`) for 1×1 kernels and from
    :data:`GEMM_MIN_MACS` multiply-adds per pixel, else the ``kh × 1`` conv of
    :func:`regular_conv2d_eager`."""
    kh, kw = plan.kernel_size
    return kh == kw == 1 or macs_per_pixel(plan) >= GEMM_MIN_MACS


def resolve_padding(
    padding: tuple[int, int] | str, kernel_size: tuple[int, int], dilation: tuple[int, int]
) -> Padding4:
    """``(top, bottom, left, right)`` of ``F.conv2d``'s padding argument (``'same'`` puts the
    odd pixel at the bottom / right, as torch does)."""
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        total = [d * (k - 1) for k, d in zip(kernel_size, dilation, strict=True)]
        return (total[0] // 2, total[0] - total[0] // 2, total[1] // 2, total[1] - total[1] // 2)
    ph, pw = padding  # type: ignore[misc]
    return (ph, ph, pw, pw)


def unsupported_reason(fields: ConvFields, in_fields: Fields, groups: int) -> str | None:
    """Why the s/d path cannot run this conv (``None`` when it can): only a depthwise conv on
    a mixed layout, whose trivial and pair groups would need two kinds of groups."""
    if (
        groups > 1
        and fields.local_in == Fields(trivial=1)
        and not (in_fields.is_trivial or in_fields.is_regular)
    ):
        return "a depthwise conv on a mixed layout (trivial channels and pairs)"
    return None


def plan_for(
    fields: ConvFields,
    in_fields: Fields,
    groups: int,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int] | str,
    dilation: tuple[int, int],
    padding_mode: str,
) -> IsotypicPlan:
    """The :class:`IsotypicPlan` of a :class:`~gcnn.nn.FlipConv2d`'s hyper-parameters.

    A depthwise conv on pairs (local input one trivial channel, output regular) becomes a
    grouped conv with one input and one output pair per group (weight ``[w, 0]``: row ``2k``
    reads only channel ``2k``)."""
    pad = resolve_padding(padding, kernel_size, dilation)
    mode_pad: Padding4 = (0, 0, 0, 0)
    if padding_mode != "zeros":
        mode_pad, pad = pad, (0, 0, 0, 0)
    depthwise_pairs = groups > 1 and fields.local_in == Fields(trivial=1) and in_fields.is_regular
    if depthwise_pairs:
        fields = ConvFields(Fields(regular=1), Fields(regular=1))
        groups = in_fields.regular
    return IsotypicPlan(
        fields, groups, kernel_size, stride, dilation, pad, padding_mode, mode_pad, depthwise_pairs
    )


def basis_kernels(free: FreeWeights, plan: IsotypicPlan) -> tuple[Tensor, Tensor | None]:
    r"""The kernels ``G_e`` / ``G_o`` of every output row in the s/d basis.

    Returns ``G_e`` of shape ``(t_out + r_out, t_l + r_l, kh, kw)`` (columns: trivial inputs,
    pair sums) and ``G_o`` of shape ``(t_out + r_out, r_l, kh, kw)`` (pair differences; ``None``
    without input pairs), rows: trivial outputs, then output pairs. Pair rows:
    ``G_e = [T, (P + Q)/2]``, ``G_o = (P − Q)/2``; trivial rows: ``G_e = [S, u]``, ``G_o = u``.
    """
    t_l, r_l = plan.fields.local_in.trivial, plan.fields.local_in.regular
    kw = plan.kernel_size[1]
    even: list[Tensor] = []
    odd: list[Tensor] = []
    if plan.fields.out.trivial:
        parts = [] if free.symmetric is None else [mirror_symmetric(free.symmetric, kw)]
        if free.invariant is not None:
            parts.append(free.invariant)
            odd.append(free.invariant)
        even.append(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])
    if free.pairs is not None:
        w = free.pairs
        if plan.depthwise_pairs:
            w = torch.cat((w, torch.zeros_like(w)), dim=1)
        p, q = w[:, t_l::2], w[:, t_l + 1 :: 2]
        even.append(torch.cat((w[:, :t_l], (p + q) / 2), dim=1) if t_l else (p + q) / 2)
        odd.append((p - q) / 2)
    g_e = even[0] if len(even) == 1 else torch.cat(even, dim=0)
    g_o = None if not r_l else (odd[0] if len(odd) == 1 else torch.cat(odd, dim=0))
    return g_e, g_o


def stacked_weight(own: Tensor | None, other: Tensor | None) -> Tensor | None:
    r"""The ``kh × 1`` weight on :func:`stacked_input` of ``(own, other)`` inputs.

    ``own`` ``(rows, n_own, kh, kw)`` is read through its symmetric part
    ``½(own + F own)``, ``other`` ``(rows, n_other, kh, kw)`` through its antisymmetric part
    ``½(other − F other)``. Returns ``(rows, n_stack, kh, 1)`` with columns
    ``[own_mid (kw odd), ½(own_c + own_{kw−1−c}) for c < kw//2, ½(other_c − other_{kw−1−c})
    for c < kw//2]``, each block channel-minor; ``None`` when there is no column (a 1×1
    kernel with no ``own`` input).
    """
    blocks: list[Tensor] = []
    for kernel, sign in ((own, 1), (other, -1)):
        if kernel is None:
            continue
        kw = kernel.shape[-1]
        half = kw // 2
        if sign == 1 and kw % 2:
            blocks.append(kernel[..., half : half + 1])
        mirror = kernel.flip(-1)
        blocks += [
            (kernel[..., c : c + 1] + sign * mirror[..., c : c + 1]) / 2 for c in range(half)
        ]
    return torch.cat(blocks, dim=1) if blocks else None


def _columns(u: Tensor, plan: IsotypicPlan, width_out: int) -> list[Tensor]:
    """The ``kw`` shifted, width-strided views of ``u`` ``(B, n, H, W)`` that the kernel
    columns read: ``col_c[..., j] = u_pad[..., c·dil + j·sw]``, each ``(B, n, H, width_out)``."""
    kw, dil, sw = plan.kernel_size[1], plan.dilation[1], plan.stride[1]
    left, right = plan.padding[2], plan.padding[3]
    padded = F.pad(u, (left, right)) if left or right else u
    end = (width_out - 1) * sw + 1
    return [padded[..., c * dil : c * dil + end : sw] for c in range(kw)]


def stacked_input(
    own: Tensor | None, other: Tensor | None, plan: IsotypicPlan, width_out: int
) -> Tensor | None:
    r"""The ``kh × 1`` conv input of one parity: ``[own_mid, Σ_c own, Δ_c other]``, group-major.

    ``own`` ``(B, G·n_own, H, W)``, ``other`` ``(B, G·n_other, H, W)`` (either may be
    ``None``); ``Σ_c u = col_c u + col_{kw−1−c} u``, ``Δ_c u = col_c u − col_{kw−1−c} u`` for
    ``c < kw//2``. Returns ``(B, G·n_stack, H, width_out)``; group ``g``'s channels are its
    blocks in :func:`stacked_weight`'s order (``None`` when there is no block).
    """
    kw, half, g = plan.kernel_size[1], plan.kernel_size[1] // 2, plan.groups
    blocks: list[Tensor] = []
    if own is not None:
        cols = _columns(own, plan, width_out)
        blocks += [cols[half]] if kw % 2 else []
        blocks += [cols[c] + cols[kw - 1 - c] for c in range(half)]
    if other is not None and half:
        cols = _columns(other, plan, width_out)
        blocks += [cols[c] - cols[kw - 1 - c] for c in range(half)]
    if len(blocks) <= 1:
        return blocks[0] if blocks else None
    b, _, h, w = blocks[0].shape
    grouped = [x.view(b, g, -1, h, w) for x in blocks]
    return torch.cat(grouped, dim=2).view(b, -1, h, w)


def even_odd(x: Tensor, in_fields: Fields) -> tuple[Tensor, Tensor | None]:
    """``x`` ``(B, t + 2r, H, W)`` → ``e = [τ, a + b]`` ``(B, t + r, H, W)`` and
    ``o = a − b`` ``(B, r, H, W)`` (``None`` when ``r = 0``)."""
    t, r = in_fields.trivial, in_fields.regular
    if not r:
        return x, None
    pairs = x[:, t:].unflatten(1, (r, 2))
    a, b = pairs[:, :, 0], pairs[:, :, 1]
    s = a + b
    return (torch.cat((x[:, :t], s), dim=1) if t else s), a - b


def to_pairs(even: Tensor, odd: Tensor | None, out_fields: Fields) -> Tensor:
    """``[τ', ŝ]`` ``(B, t + r, H, W)`` and ``d̂`` ``(B, r, H, W)`` → ``(B, t + 2r, H, W)`` with
    pairs ``(ŝ + d̂, ŝ − d̂)``."""
    t = out_fields.trivial
    if odd is None:
        return even
    s = even[:, t:]
    pairs = torch.stack((s + odd, s - odd), dim=2).flatten(1, 2)
    return torch.cat((even[:, :t], pairs), dim=1) if t else pairs


def _pad_height(x: Tensor, plan: IsotypicPlan) -> tuple[Tensor, int]:
    """Apply a non-zero ``padding_mode``'s padding and any asymmetric height padding; returns
    the input and the symmetric zero height padding left for the ``kh × 1`` conv."""
    if plan.padding_mode != "zeros":
        top, bottom, left, right = plan.mode_padding
        x = F.pad(x, (left, right, top, bottom), mode=plan.padding_mode)
    top, bottom = plan.padding[:2]
    if top != bottom:
        return F.pad(x, (0, 0, top, bottom)), 0
    return x, top


def isotypic_conv2d(
    x: Tensor, free: FreeWeights, bias: Tensor | None, plan: IsotypicPlan, in_fields: Fields
) -> Tensor:
    """The flip conv of ``x`` ``(B, C_in, H, W)`` in the s/d basis: ``(B, C_out, H', W')``,
    equal to ``F.conv2d`` with the full weight and bias (``bias``: the free ``(t_out + r_out,)``
    bias)."""
    x, top = _pad_height(x, plan)
    left, right = plan.padding[2:]
    kw, sw, dw = plan.kernel_size[1], plan.stride[1], plan.dilation[1]
    width_out = (x.shape[-1] + left + right - dw * (kw - 1) - 1) // sw + 1
    conv = {"stride": (plan.stride[0], 1), "padding": (top, 0), "dilation": (plan.dilation[0], 1)}
    e, o = even_odd(x, in_fields)
    g_e, g_o = basis_kernels(free, plan)
    if plan.fused:
        z = torch.stack(
            (stacked_input(e, o, plan, width_out), stacked_input(o, e, plan, width_out)), dim=1
        ).flatten(1, 2)
        w = torch.cat((stacked_weight(g_e, g_o), stacked_weight(g_o, g_e)), dim=0)
        both = None if bias is None else torch.cat((bias, torch.zeros_like(bias)))
        y = F.conv2d(z, w, both, groups=2 * plan.groups, **conv)
        return to_pairs(*y.chunk(2, dim=1), out_fields=Fields(regular=y.shape[1] // 2))
    even = F.conv2d(
        stacked_input(e, o, plan, width_out), stacked_weight(g_e, g_o), bias,
        groups=plan.groups, **conv,
    )  # fmt: skip
    out = plan.fields.out
    if not out.regular:
        return even
    t = out.trivial
    z_odd = stacked_input(o, e, plan, width_out)
    if z_odd is None:  # trivial → regular 1×1: both rows of a pair are equal
        odd = torch.zeros_like(even[:, t:])
    else:
        w_odd = stacked_weight(None if g_o is None else g_o[t:], g_e[t:])
        odd = F.conv2d(z_odd, w_odd, None, groups=plan.groups, **conv)
    return to_pairs(even, odd, Fields(trivial=t, regular=out.regular))


# --- the eager fast path for regular → regular convs (channels-last, hand-scheduled passes) ---


def _blocks(kw: int) -> list[tuple[bool, int, int]]:
    """``(symmetric, c, c')`` of each stacked block: the centre column (``c = c'``, odd ``kw``),
    the sums ``Σ_c``, then the differences ``Δ_c`` (``c' = kw − 1 − c``, ``c < kw//2``)."""
    half = kw // 2
    blocks = [(True, half, half)] if kw % 2 else []
    blocks += [(True, c, kw - 1 - c) for c in range(half)]
    return blocks + [(False, c, kw - 1 - c) for c in range(half)]


class _PairWeight(torch.autograd.Function):
    r"""Free pairs ``w`` ``(r_out, 2·r_l, kh, kw)`` → the ``kh × 1`` weight
    ``(2·r_out, P·r_l, kh, 1)`` of both parities (rows ``ŝ``, then ``d̂``; columns block-major).

    With ``A = P + Q`` and ``D = P − Q`` of the input pairs' ``a``/``b`` columns: parity ``E``
    has ``¼(A_c + A_c')`` on symmetric blocks (the centre gives ``A_mid/2``) and
    ``¼(D_c − D_c')`` on difference blocks; parity ``O`` ``¼(D_c + D_c')`` and
    ``¼(A_c − A_c')``: the weights of :func:`stacked_weight` on :func:`basis_kernels`, written
    with one pass per block; the backward is its adjoint."""

    @staticmethod
    def forward(ctx: Any, w: Tensor) -> Tensor:  # type: ignore[override]
        r_out, c_in, kh, kw = w.shape
        ctx.shape = w.shape
        pairs = w.view(r_out, c_in // 2, 2, kh, kw)
        sums = pairs[:, :, 0] + pairs[:, :, 1]
        diffs = pairs[:, :, 0] - pairs[:, :, 1]
        blocks = _blocks(kw)
        out = w.new_empty(2, r_out, len(blocks), c_in // 2, kh)
        for p, (symmetric, c, c2) in enumerate(blocks):
            even, odd = (sums, diffs) if symmetric else (diffs, sums)
            op = torch.add if symmetric else torch.sub
            op(even[..., c], even[..., c2], out=out[0, :, p])
            op(odd[..., c], odd[..., c2], out=out[1, :, p])
        return out.mul_(0.25).view(2 * r_out, -1, kh, 1)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        r_out, c_in, kh, kw = ctx.shape
        blocks = _blocks(kw)
        g = grad.reshape(2, r_out, len(blocks), c_in // 2, kh)
        g_sums = grad.new_zeros(r_out, c_in // 2, kh, kw)
        g_diffs = torch.zeros_like(g_sums)
        for p, (symmetric, c, c2) in enumerate(blocks):
            even, odd = (g_sums, g_diffs) if symmetric else (g_diffs, g_sums)
            sign = 1.0 if symmetric else -1.0
            even[..., c].add_(g[0, :, p])
            even[..., c2].add_(g[0, :, p], alpha=sign)
            odd[..., c].add_(g[1, :, p])
            odd[..., c2].add_(g[1, :, p], alpha=sign)
        gw = grad.new_empty(r_out, c_in // 2, 2, kh, kw)
        torch.add(g_sums, g_diffs, out=gw[:, :, 0])
        torch.sub(g_sums, g_diffs, out=gw[:, :, 1])
        return gw.mul_(0.25).view(ctx.shape)


def write_block(
    target: Tensor, left: Tensor, right: Tensor, symmetric: bool, centre: bool, parity: int
) -> None:
    """Write one stacked block of both parities (dimension ``parity`` of ``target``) from the
    kernel-column views ``left`` (column ``c``) and ``right`` (column ``kw − 1 − c``) of
    ``u = [s, d]``: the centre column is copied, a sum block is ``left + right``, a difference
    block ``Δ`` reads the *other* parity (``E`` gets ``Δ d``, ``O`` gets ``Δ s``)."""
    if centre:
        target.copy_(left)
    elif symmetric:
        torch.add(left, right, out=target)
    else:
        for p in (0, 1):
            other = 1 - p
            torch.sub(left.select(parity, other), right.select(parity, other),
                      out=target.select(parity, p))  # fmt: skip


def add_block_adjoint(
    block: Tensor, left: Tensor, right: Tensor, symmetric: bool, centre: bool, parity: int
) -> None:
    """The adjoint of :func:`write_block`: accumulate the gradient ``block`` of one stacked
    block into the column views ``left`` / ``right`` of ``∂u``."""
    if centre:
        left.add_(block)
    elif symmetric:
        left.add_(block)
        right.add_(block)
    else:
        for p in (0, 1):
            left.select(parity, 1 - p).add_(block.select(parity, p))
            right.select(parity, 1 - p).sub_(block.select(parity, p))


class _Geometry:
    """Shapes shared by the two passes of :class:`_PairPieces` (channels-first views)."""

    def __init__(self, x_shape: torch.Size, plan: IsotypicPlan) -> None:
        self.batch, channels, self.height, self.width = x_shape
        self.pairs = channels // 2
        kh, self.kw = plan.kernel_size
        self.dil, self.sw = plan.dilation[1], plan.stride[1]
        self.left, self.right = plan.padding[2], plan.padding[3]
        #: width of ``u``: the input's columns between the zero padding
        self.padded_width = self.width + self.left + self.right
        span = self.padded_width - self.dil * (self.kw - 1) - 1
        self.width_out = span // self.sw + 1
        # a kh = 1 conv without height padding reads every sh-th row only: take them here
        self.rows = plan.stride[0] if kh == 1 and plan.padding[0] == 0 else 1
        self.height_out = (self.height - 1) // self.rows + 1
        self.groups = plan.groups
        self.blocks = _blocks(self.kw)
        #: the s/d map is the stack itself (1×1, no width padding or stride): no second pass
        self.direct = self.kw == 1 and self.left == self.right == 0 and self.sw == 1
        #: the centre column's view of ``u`` is its whole interior (odd ``kw``, "same" width
        #: padding, no stride, every row): the backward writes it instead of zeroing first
        self.centre_is_interior = (
            self.kw % 2 == 1
            and self.rows == 1
            and self.sw == 1
            and self.width_out == self.width
            and self.left == (self.kw // 2) * self.dil
        )

    def basis(self, like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """``(B, 2, R, H, W + left + right)`` for ``[s, d]``, zero in the padding columns."""
        shape = (self.batch, 2, self.pairs, self.height, self.padded_width)
        u = like.new_empty(shape, dtype=dtype)
        u[..., : self.left].zero_()
        u[..., self.left + self.width :].zero_()
        return u

    def stack(self, like: Tensor) -> Tensor:
        """The stacked input ``(B, 2, G, P, r_l, H', W')``."""
        shape = (self.batch, 2, self.groups, len(self.blocks), -1, self.height_out, self.width_out)
        return like.new_empty(self.batch, 2 * len(self.blocks) * self.pairs,
                              self.height_out, self.width_out).view(shape)  # fmt: skip

    def column(self, u: Tensor, c: int) -> Tensor:
        """Kernel column ``c``'s view ``(B, 2, G, r_l, H', W')`` of ``u``."""
        start = c * self.dil
        cols = u[..., :: self.rows, start : start + (self.width_out - 1) * self.sw + 1 : self.sw]
        return cols.unflatten(2, (self.groups, -1))

    def interior(self, u: Tensor) -> Tensor:
        """The unpadded columns ``(B, 2, R, H, W)`` of ``u``."""
        return u[..., self.left : self.left + self.width]


class _PairPieces(torch.autograd.Function):
    """``x`` ``(B, 2R, H, W)`` (pairs) → the stacked input ``z`` ``(B, 2·G·P·r_l, H', W')`` of
    both parities: parity ``E`` reads ``(s, Σ s, Δ d)``, parity ``O`` ``(d, Σ d, Δ s)``,
    ordered (parity, group, block, pair); channels-first, one pass per block (both parities
    at once where they read the same half); the backward is its adjoint."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, plan: IsotypicPlan) -> Tensor:  # type: ignore[override]
        geo = ctx.geo = _Geometry(x.shape, plan)
        pairs = x.contiguous().view(geo.batch, geo.pairs, 2, geo.height, geo.width)
        if geo.direct:
            z = geo.stack(x)
            u = z.view(geo.batch, 2, geo.pairs, geo.height_out, geo.width)
            rows = pairs[..., :: geo.rows, :]
            torch.add(rows[:, :, 0], rows[:, :, 1], out=u[:, 0])
            torch.sub(rows[:, :, 0], rows[:, :, 1], out=u[:, 1])
            return z.flatten(1, 4)
        u = geo.basis(x)
        inner = geo.interior(u)
        torch.add(pairs[:, :, 0], pairs[:, :, 1], out=inner[:, 0])
        torch.sub(pairs[:, :, 0], pairs[:, :, 1], out=inner[:, 1])
        z = geo.stack(x)
        for p, (symmetric, c, c2) in enumerate(geo.blocks):
            left, right = geo.column(u, c), geo.column(u, c2)
            write_block(z[:, :, :, p], left, right, symmetric, c == c2, parity=1)
        return z.flatten(1, 4)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        geo = ctx.geo
        g = grad.contiguous().view(
            geo.batch, 2, geo.groups, len(geo.blocks), -1, geo.height_out, geo.width_out
        )
        acc = accumulation_dtype(grad)  # bf16 / fp16 gradients: sums in float32, rounded once
        if geo.centre_is_interior:  # the centre block's adjoint is a copy into the interior
            gu = geo.basis(grad, acc)
            geo.column(gu, geo.kw // 2).copy_(g[:, :, :, 0])
            first = 1
        else:
            shape = (geo.batch, 2, geo.pairs, geo.height, geo.padded_width)
            gu = grad.new_zeros(shape, dtype=acc)
            first = 0
        for p, (symmetric, c, c2) in enumerate(geo.blocks[first:], start=first):
            left, right = geo.column(gu, c), geo.column(gu, c2)
            add_block_adjoint(g[:, :, :, p], left, right, symmetric, c == c2, parity=1)
        inner = geo.interior(gu)
        gx = grad.new_empty(geo.batch, geo.pairs, 2, geo.height, geo.width)
        torch.add(inner[:, 0], inner[:, 1], out=gx[:, :, 0])
        torch.sub(inner[:, 0], inner[:, 1], out=gx[:, :, 1])
        return gx.flatten(1, 2), None


class _ToPairs(torch.autograd.Function):
    """``y`` ``(B, 2R, H, W)`` = ``[ŝ, d̂]`` → pairs ``(ŝ + d̂, ŝ − d̂)`` interleaved (channels
    first); the backward maps ``(g_a, g_b)`` to ``[g_a + g_b, g_a − g_b]`` (the map is its own
    adjoint)."""

    @staticmethod
    def forward(ctx: Any, y: Tensor) -> Tensor:  # type: ignore[override]
        b, c, h, w = y.shape
        halves = y.contiguous().view(b, 2, c // 2, h, w)
        out = y.new_empty(b, c, h, w)  # returned itself, not a view: callers may ReLU in place
        pairs = out.view(b, c // 2, 2, h, w)
        torch.add(halves[:, 0], halves[:, 1], out=pairs[:, :, 0])
        torch.sub(halves[:, 0], halves[:, 1], out=pairs[:, :, 1])
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        b, c, h, w = grad.shape
        pairs = grad.contiguous().view(b, c // 2, 2, h, w)
        out = grad.new_empty(b, 2, c // 2, h, w)
        torch.add(pairs[:, :, 0], pairs[:, :, 1], out=out[:, 0])
        torch.sub(pairs[:, :, 0], pairs[:, :, 1], out=out[:, 1])
        return out.view(b, c, h, w)


class StackedPasses(NamedTuple):
    """The passes :func:`regular_conv2d_eager` runs around its ``kh × 1`` conv: autograd
    Functions in eager mode (:data:`EAGER_STACKED_PASSES`), custom ops under ``torch.compile``
    (:data:`gcnn.nn.isotypic_ops.COMPILED_STACKED_PASSES`)."""

    weight: Callable[[Tensor], Tensor]
    pieces: Callable[[Tensor, IsotypicPlan], Tensor]
    to_pairs: Callable[[Tensor], Tensor]


EAGER_STACKED_PASSES = StackedPasses(_PairWeight.apply, _PairPieces.apply, _ToPairs.apply)


def regular_conv2d_eager(
    x: Tensor,
    w: Tensor,
    bias: Tensor | None,
    plan: IsotypicPlan,
    passes: StackedPasses = EAGER_STACKED_PASSES,
) -> Tensor:
    """The regular → regular flip conv in the s/d basis with hand-scheduled channels-first
    passes (:class:`_PairPieces`, one grouped ``kh × 1`` conv, :class:`_ToPairs`). ``w``: free
    pairs ``(r_out, 2·r_l, kh, kw)``, ``bias``: ``(r_out,)``. Output channels-first."""
    x, top = _pad_height(x, plan)
    z = passes.pieces(x, plan)
    rows_taken = plan.kernel_size[0] == 1 and top == 0
    both = None if bias is None else torch.cat((bias, torch.zeros_like(bias)))
    y = F.conv2d(
        z, passes.weight(w), both, stride=(1 if rows_taken else plan.stride[0], 1),
        padding=(top, 0), dilation=(plan.dilation[0], 1), groups=2 * plan.groups,
    )  # fmt: skip
    return passes.to_pairs(y)
