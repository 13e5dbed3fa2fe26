r"""The one weight expansion of flip convs: free weights ↔ the full, constrained filter.

Both backends use it: :class:`gcnn.nn.FlipConv2d` stores the free weights as parameters, the
escnn layers compute them from basis coefficients.

A conv from input layout ``in`` to output layout ``out`` with ``groups`` groups has a full
weight ``W`` of shape ``(out.channels, in.channels/groups, kh, kw)``. Each row reads one group
of ``in_g = in.channels/groups`` input channels whose local layout is a :class:`Fields`
``L = (t_l, r_l)`` (for ``groups == 1``, ``L = in``). The conv commutes with the flip iff

    ``W[σ_out(o)] = F L·W[o]``  for every output channel ``o``,

with ``F`` mirroring the kernel width, ``L·`` permuting the input columns by ``L``'s flip
permutation and ``σ_out`` the output's. This fixes the rows of each output pair from the first
one and ties the columns of each trivial row. The free weights (``T``/``R`` = trivial channels /
pairs of ``out``):

* ``pairs``: ``(R, in_g, kh, kw)``, the first row of each output pair (any values); the second
  row is ``F L·w``;
* ``invariant``: ``(T, r_l, kh, kw)``, the first column of each input pair for the trivial rows;
  the second column is its mirror;
* ``symmetric``: ``(T, t_l, kh, ⌈kw/2⌉)``, the left half (middle column included) of the
  mirror-symmetric kernels from trivial inputs to trivial rows.

The map is injective and its image is every equivariant filter (a permutation's fixed space has
one dimension per orbit, and the blocks list one entry per orbit), so the parametrisation is
complete: ``R·in_g·kh·kw + T·(r_l·kh·kw + t_l·kh·⌈kw/2⌉)`` free parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from gcnn.nn.fields import Fields


@dataclass(frozen=True)
class FreeWeights:
    """The free blocks of one flip conv's filter (``None`` where a block is empty)."""

    pairs: Tensor | None = None
    invariant: Tensor | None = None
    symmetric: Tensor | None = None


@dataclass(frozen=True)
class ConvFields:
    """The field structure of a flip conv: output layout and the local input layout ``L``."""

    out: Fields
    local_in: Fields

    def shapes(self, kernel_size: tuple[int, int]) -> dict[str, tuple[int, ...]]:
        """Shapes of the non-empty free blocks, keyed by :class:`FreeWeights` field name."""
        kh, kw = kernel_size
        shapes: dict[str, tuple[int, ...]] = {}
        if self.out.regular:
            shapes["pairs"] = (self.out.regular, self.local_in.channels, kh, kw)
        if self.out.trivial and self.local_in.regular:
            shapes["invariant"] = (self.out.trivial, self.local_in.regular, kh, kw)
        if self.out.trivial and self.local_in.trivial:
            shapes["symmetric"] = (self.out.trivial, self.local_in.trivial, kh, (kw + 1) // 2)
        return shapes

    def free_count(self, kernel_size: tuple[int, int]) -> int:
        """Number of free parameters (the dimension of the equivariant filters)."""
        return sum(int(torch.Size(s).numel()) for s in self.shapes(kernel_size).values())


def mirror_symmetric(half: Tensor, kernel_width: int) -> Tensor:
    """``(…, ⌈kw/2⌉) → (…, kw)``: the kernel whose left half is ``half`` and ``K = F K``."""
    return torch.cat((half, half[..., : kernel_width // 2].flip(-1)), dim=-1)


def interleave(a: Tensor, b: Tensor, dim: int) -> Tensor:
    """``a`` and ``b`` (same shape) interleaved along ``dim``: ``a₀, b₀, a₁, b₁, …``."""
    return torch.stack((a, b), dim=dim + 1).flatten(dim, dim + 1)


def _pair_mirror_index(kh: int, kw: int, device: torch.device) -> Tensor:
    """The permutation of one input pair's ``2·kh·kw`` weights that swaps the pair and mirrors
    the kernel width (an involution)."""
    return torch.arange(2 * kh * kw, device=device).view(2, kh, kw).flip((0, 2)).reshape(-1)


def _build_pair_rows_index(channels: int, kh: int, kw: int, device: torch.device) -> Tensor:
    """``(2, L)`` with ``L = channels·kh·kw``: row 0 the identity, row 1 the permutation of a
    flattened ``(channels, kh, kw)`` filter with all-pair channels that swaps every pair and
    mirrors the kernel width (:func:`_pair_mirror_index` on each pair; an involution). One
    ``index_select`` with it is 2–4× faster on CPU than ``aten::flip`` over two dimensions."""
    block = 2 * kh * kw
    starts = torch.arange(0, channels * kh * kw, block, device=device)
    mirror = (starts[:, None] + _pair_mirror_index(kh, kw, device)).reshape(-1)
    return torch.stack((torch.arange(channels * kh * kw, device=device), mirror))


_cached_pair_rows_index = lru_cache(maxsize=256)(_build_pair_rows_index)


def _pair_rows_index(channels: int, kh: int, kw: int, device: torch.device) -> Tensor:
    """:func:`_build_pair_rows_index`, cached in eager mode. Under ``torch.compile`` it is
    built in the graph: dynamo does not honour ``lru_cache`` (it traces the wrapped function
    anyway) and warns each process that meets one."""
    if torch.compiler.is_compiling():
        return _build_pair_rows_index(channels, kh, kw, device)
    return _cached_pair_rows_index(channels, kh, kw, device)


class _PairRows(torch.autograd.Function):
    """The output pair rows ``W[2k] = w[k]``, ``W[2k+1] = F S·w[k]`` for all-pair inputs as one
    ``gather`` on the ``(rows, L)`` view (one pass, no ``stack``; on large weights ``gather``
    with an expanded index beat ``index_select`` + ``stack`` ≈ 1.7× on an AMD EPYC, and one
    ``index_select`` by 9–20 % on an AMX Xeon; small weights take one ``index_select``:
    :func:`pair_rows`). The backward is the adjoint ``∂w = ∂W[2k] + F S·∂W[2k+1]`` (the
    mirror is an involution)."""

    @staticmethod
    def forward(ctx: Any, w: Tensor) -> Tensor:  # type: ignore[override]
        rows, cols, kh, kw = w.shape
        index = _pair_rows_index(cols, kh, kw, w.device)
        ctx.shape, ctx.mirror = w.shape, index[1]
        flat = w.reshape(rows, 1, -1).expand(rows, 2, -1)
        # Gathered into a view of the returned buffer, not returned as a view of its own:
        # callers may modify ``full_weight()`` in place, which autograd forbids on a view
        # made inside a custom Function.
        full = w.new_empty(2 * rows, cols, kh, kw)
        torch.gather(flat, 2, index.expand(rows, 2, -1), out=full.view(rows, 2, -1))
        return full

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        rows = ctx.shape[0]
        halves = grad.reshape(rows, 2, -1)
        mirrored = torch.gather(halves[:, 1], 1, ctx.mirror.expand(rows, -1))
        return mirrored.add_(halves[:, 0]).view(ctx.shape)


#: Largest all-pair free weight (elements) that :func:`pair_rows` expands with ``index_select``
#: in eager mode. Below it the Python backward of :class:`_PairRows` costs more than the
#: ``index_select`` backward, which runs in C++ (VGG11 training steps, batch 32, on an AMX
#: Xeon: ``vgg11_flip(width=0.25)`` 2–4 % faster, width 0.5 ≈ 1 %); above it the ``gather``
#: is faster (width 1: ``index_select`` everywhere cost ≈ 2 %). ``benchmarks/README.md``.
INDEX_SELECT_MAX_NUMEL = 1 << 17


def pair_rows(w: Tensor) -> Tensor:
    """The output pair rows ``W[2k] = w[k]``, ``W[2k+1] = F S·w[k]`` of all-pair inputs:
    ``(R, C, kh, kw) → (2R, C, kh, kw)``. In eager mode a weight of at most
    :data:`INDEX_SELECT_MAX_NUMEL` elements is one ``index_select`` of the ``(R, C·kh·kw)`` view
    with the ``[identity, mirror]`` index (autograd's own backward, an ``index_add``); larger
    weights, and every weight under ``torch.compile``, take :class:`_PairRows`."""
    if torch.compiler.is_compiling() or w.numel() > INDEX_SELECT_MAX_NUMEL:
        return _PairRows.apply(w)
    rows, cols, kh, kw = w.shape
    index = _pair_rows_index(cols, kh, kw, w.device).view(-1)
    return w.reshape(rows, -1).index_select(1, index).view(2 * rows, cols, kh, kw)


def mirrored_columns(w: Tensor, local_in: Fields) -> Tensor:
    """``F L·w`` for ``w`` of shape ``(rows, in_g, kh, kw)``: input pairs swapped and the kernel
    width mirrored (all-pair inputs take :func:`pair_rows` instead)."""
    return local_in.act(w, dim=1).flip(-1)


def expand_conv_weight(free: FreeWeights, fields: ConvFields, kernel_width: int) -> Tensor:
    """The full filter ``(out.channels, in_g, kh, kw)``: trivial rows, then the output pairs."""
    rows: list[Tensor] = []
    if fields.out.trivial:
        cols: list[Tensor] = []
        if free.symmetric is not None:
            cols.append(mirror_symmetric(free.symmetric, kernel_width))
        if free.invariant is not None:
            cols.append(interleave(free.invariant, free.invariant.flip(-1), dim=1))
        rows.append(cols[0] if len(cols) == 1 else torch.cat(cols, dim=1))
    if free.pairs is not None and fields.local_in.is_regular:
        rows.append(pair_rows(free.pairs))
    elif free.pairs is not None:
        rows.append(interleave(free.pairs, mirrored_columns(free.pairs, fields.local_in), dim=0))
    return rows[0] if len(rows) == 1 else torch.cat(rows, dim=0)


def free_from_full(weight: Tensor, fields: ConvFields) -> FreeWeights:
    """The free blocks read off a full filter ``(out.channels, in_g, kh, kw)``.

    For an equivariant ``weight`` this inverts :func:`expand_conv_weight`; for any other it
    takes the first row of each output pair, the first column of each input pair of the
    trivial rows, and the left half of their kernels from trivial inputs (not a projection).
    """
    t_out, t_in = fields.out.trivial, fields.local_in.trivial
    kw = weight.shape[-1]
    trivial_rows = weight[:t_out]
    return FreeWeights(
        pairs=weight[t_out::2] if fields.out.regular else None,
        invariant=trivial_rows[:, t_in::2] if t_out and fields.local_in.regular else None,
        symmetric=trivial_rows[:, :t_in, :, : (kw + 1) // 2] if t_out and t_in else None,
    )


def expand_bias(bias: Tensor, out: Fields) -> Tensor:
    """``(T + R,) → (out.channels,)``: trivial biases, then each pair's bias twice."""
    if out.is_trivial:
        return bias
    shared = bias[out.trivial :, None].expand(-1, 2).reshape(-1)  # 3× repeat_interleave speed
    return shared if out.is_regular else torch.cat((bias[: out.trivial], shared))


def free_bias(bias: Tensor, out: Fields) -> Tensor:
    """``(out.channels,) → (T + R,)``: trivial biases and the first bias of each pair."""
    return torch.cat((bias[: out.trivial], bias[out.trivial :: 2]))


def local_input_fields(in_fields: Fields, out_fields: Fields, groups: int) -> Fields:
    """The layout ``L`` of each group's input channels; raises when the groups split the fields.

    ``groups == 1``: ``L = in_fields``. Otherwise every row must see the same ``L`` and the flip
    must map the input slice of a row's group onto that of its partner row's group: all-trivial
    or all-regular inputs with pairs inside groups, or depthwise convs (``in_g = out_g = 1``) on
    one layout in and out, where pair partners sit in neighbouring groups and ``L`` is one
    trivial channel.
    """
    if groups == 1:
        return in_fields
    c_in, c_out = in_fields.channels, out_fields.channels
    if c_in % groups or c_out % groups:
        raise ValueError(
            f"in_channels ({c_in}) and out_channels ({c_out}) must be divisible by groups "
            f"({groups})"
        )
    in_g, out_g = c_in // groups, c_out // groups
    if in_g == 1:
        local = Fields(trivial=1)
    elif in_fields.is_trivial:
        local = Fields(trivial=in_g)
    elif in_fields.is_regular and in_g % 2 == 0:
        local = Fields(regular=in_g // 2)
    else:
        raise ValueError(
            f"groups={groups} splits input pairs or mixes field kinds in a group: in_channels/"
            f"groups = {in_g} for {in_fields} (use groups=1, or groups == in == out)"
        )
    rows = torch.arange(c_out)
    partner_group = out_fields.permutation()[rows] // out_g
    cols = (rows // out_g)[:, None] * in_g + torch.arange(in_g)[None]
    expected = partner_group[:, None] * in_g + local.permutation()[None]
    if not torch.equal(in_fields.permutation()[cols], expected):
        raise ValueError(
            f"groups={groups} splits output pairs: out_channels/groups = {out_g} for "
            f"{out_fields} with input {in_fields} (use groups with whole pairs, or "
            "groups == in == out with the same fields in and out)"
        )
    return local
