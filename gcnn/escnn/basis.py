r"""The complete flip-equivariant kernel basis for escnn's ``R2Conv`` on ``flip2dOnR2`` fields.

Field types: a :class:`~gcnn.nn.Fields` layout ``(trivial=t, regular=r)`` is escnn's direct sum
of ``t`` trivial representations, then ``r`` regular representations of the flip group
(:func:`escnn_type`): the same channels in the same order as the hand-written layers (trivial
channels first, then interleaved pairs ``(t + 2k, t + 2k + 1)``, which the flip swaps).

escnn's default basis for a 3×3 regular→regular kernel is band-limited: it spans 12 of the 18
dimensions of flip-equivariant kernels. :func:`full_basis_r2conv` samples the harmonic basis on
one ring per distinct radius of the grid, with angular frequencies up to the kernel size, and
keeps a linearly independent subset (greedy, lowest frequency first) through ``basis_filter``,
separately in each block of one input and one output field kind (:func:`independent_basis`).
The result spans *every* equivariant kernel with no redundant parameter (:func:`free_dimension`
per field pair: 18 for a 3×3 regular→regular pair, 6 for a mirror-symmetric 3×3
trivial→trivial kernel, 49 for the 7×7 trivial→regular stem), exactly the free parameters of
:class:`gcnn.nn.FlipConv2d`. Hence the hand-written → escnn conversion is an exact linear solve
(residual at float32 round-off).

Filters are expanded from the coefficients into the free weights of :mod:`gcnn.nn.expansion`
(the first row of each output pair, the first column of each input pair of a trivial output,
the left half of a trivial→trivial kernel) and from there by the same
:func:`~gcnn.nn.expansion.expand_conv_weight` as the hand-written layers.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from escnn import gspaces
from escnn import nn as enn
from escnn.group import Representation
from escnn.gspaces import GSpace2D
from escnn.kernels import KernelBasis
from torch import Tensor, nn

from gcnn.escnn.sharing import deepcopy_sharing
from gcnn.nn import Fields, FieldSpec
from gcnn.nn.expansion import ConvFields, FreeWeights, expand_conv_weight
from gcnn.nn.fields import FieldType as FieldName
from gcnn.nn.fields import check_field_spec

# Buffers of R2Conv that are functions of its parameters (present only in eval mode).
_DERIVED_BUFFERS = ("filter", "expanded_bias")
#: Field kinds in layout order: trivial fields come first.
_KINDS: tuple[FieldName, FieldName] = ("trivial", "regular")
_SIZE = {"trivial": 1, "regular": 2}


@functools.cache
def flip_gspace() -> GSpace2D:
    """escnn's ``flip2dOnR2()``: the flip ``x.flip(-1)`` acting on the plane (axis π/2)."""
    return gspaces.flip2dOnR2()


@functools.cache
def escnn_type(fields: Fields) -> enn.FieldType:
    """escnn's field type of a layout: ``fields.trivial`` trivial representations, then
    ``fields.regular`` regular ones; ``fields.channels`` channels in gcnn's order."""
    gs = flip_gspace()
    return enn.FieldType(
        gs, fields.trivial * [gs.trivial_repr] + fields.regular * [gs.regular_repr]
    )


def field_type(channels: int, field: FieldSpec) -> enn.FieldType:
    """The escnn type of ``channels`` channels of layout ``field`` (a :class:`Fields` or the
    shorthand ``"trivial"`` / ``"regular"``)."""
    return escnn_type(Fields.of(check_field_spec(field), channels))


def fields_of(field_type: enn.FieldType) -> Fields:
    """The :class:`~gcnn.nn.Fields` layout of an escnn field type of trivial fields followed by
    regular fields; raises ``ValueError`` for any other type."""
    gs = flip_gspace()
    names = [r.name for r in field_type.representations]
    t = names.count(gs.trivial_repr.name)
    if names != t * [gs.trivial_repr.name] + (len(names) - t) * [gs.regular_repr.name]:
        raise ValueError(f"need trivial fields, then regular ones, of flip2dOnR2: {field_type}")
    return Fields(trivial=t, regular=len(names) - t)


def _basis_params(kernel_size: int, dilation: int) -> dict[str, Any]:
    """Rings at every distinct radius of the sampling grid; frequencies up to ``k//2 + 2``."""
    coords = (np.arange(kernel_size) - (kernel_size - 1) / 2) * dilation
    max_radius = dilation * (kernel_size - 1) / 2 * np.sqrt(2)
    radii = sorted({round(math.hypot(a, b), 9) for a in coords for b in coords})
    rings = [min(r, max_radius) for r in radii]
    sigma = [0.005 if r == 0 else 0.25 * dilation for r in rings]
    return {
        "rings": rings,
        "sigma": sigma,
        "frequencies_cutoff": lambda r, f=kernel_size // 2 + 2: 0 if r == 0 else f,
    }


def free_dimension(kernel_size: int, in_field: FieldName, out_field: FieldName) -> int:
    """Dimension of flip-equivariant ``k×k`` kernels from one ``in_field`` to one ``out_field``.

    The flip pairs pixel ``x`` with its mirror ``Fx``, and ``K(Fx) = ρ_out K(x) ρ_in⁻¹`` fixes
    ``K(Fx)`` from ``K(x)``: ``o·i`` free entries per pixel pair (field sizes ``o, i``; a
    regular field has size 2). A pixel on the mirror axis (odd ``k``) is its own partner: its
    ``o × i`` block must commute with the flip, a space of dimension ``⌈o·i/2⌉`` (2 of 4 for
    regular→regular, 1 otherwise). So ``o·i·k·⌊k/2⌋ + ⌈o·i/2⌉·k·(k mod 2)``: ``o·i·k²/2``
    except trivial→trivial, ``k·⌈k/2⌉`` (mirror-symmetric kernels).
    """
    oi = _SIZE[out_field] * _SIZE[in_field]
    return oi * kernel_size * (kernel_size // 2) + (oi + 1) // 2 * kernel_size * (kernel_size % 2)


def _kind(size: int) -> FieldName:
    return "regular" if size == 2 else "trivial"


@dataclass(frozen=True)
class _Block:
    """The part of an ``R2Conv`` between the input fields of one kind and the output fields of
    one kind: escnn's basis expansion of one field pair (``sampled_basis`` of shape
    ``(dim, o, i, k²)``, ``o``/``i`` the field sizes) and the coefficients of its
    ``n_out × n_in`` field pairs, ``conv.weights[coefficients]`` viewed as
    ``(n_out, n_in, dim)`` (escnn's order)."""

    expansion: nn.Module
    coefficients: slice
    n_out: int
    n_in: int

    @property
    def basis(self) -> Tensor:
        return self.expansion.sampled_basis

    @property
    def kinds(self) -> tuple[FieldName, FieldName]:
        """``(input kind, output kind)``, read off the field sizes."""
        _, o, i, _ = self.basis.shape
        return _kind(i), _kind(o)


def _blocks(conv: enn.R2Conv) -> list[_Block]:
    """The blocks of ``conv`` (at most four: trivial/regular in × trivial/regular out), read
    from escnn's ``BlocksBasisExpansion`` (its per-block modules and coefficient ranges)."""
    expansion = conv.basisexpansion
    counts_in = dict(zip(_KINDS, _counts(fields_of(conv.in_type)), strict=True))
    counts_out = dict(zip(_KINDS, _counts(fields_of(conv.out_type)), strict=True))
    blocks = []
    for pair in expansion._representations_pairs:
        module = getattr(expansion, f"block_expansion_{expansion._escape_pair(pair)}")
        start, stop = expansion._weights_ranges[pair]
        _, o, i, _ = module.sampled_basis.shape
        n_out, n_in = counts_out[_kind(o)], counts_in[_kind(i)]
        blocks.append(_Block(module, slice(start, stop), n_out, n_in))
    return blocks


def _counts(fields: Fields) -> tuple[int, int]:
    return fields.trivial, fields.regular


def _channels(trivial: int, kind: FieldName) -> slice:
    """The channels of the fields of ``kind`` in a layout with ``trivial`` trivial fields."""
    return slice(0, trivial) if kind == "trivial" else slice(trivial, None)


def _free_part(basis: Tensor) -> Tensor:
    """``(dim, o, i, k²) → (dim, free)``: the entries that fix an equivariant block, in the
    order of the free weights of :mod:`gcnn.nn.expansion`: the first row of a regular output
    field (``(i, k²)``), else the first column of a regular input field (``(k²,)``), else
    (trivial→trivial) the left half of the kernel, middle column included (``(k, ⌈k/2⌉)``)."""
    dim, o, i, s = basis.shape
    if o == 2:
        return basis[:, 0].reshape(dim, -1)
    if i == 2:
        return basis[:, 0, 0]
    k = math.isqrt(s)
    return basis[:, 0, 0].reshape(dim, k, k)[..., : (k + 1) // 2].reshape(dim, -1)


@functools.cache
def independent_basis(
    kernel_size: int, dilation: int, in_field: FieldName, out_field: FieldName
) -> frozenset[int]:
    """Indices (escnn's ``idx`` attribute) of a basis of all equivariant kernels, no redundancy.

    Samples the rich basis of :func:`_basis_params` for one field pair and keeps, in escnn's
    order (by frequency), each element that is equivariant on the grid (relative deviation
    ≤ 1e-4: escnn normalises each sampled element, so a frequency that aliases to zero on the
    grid becomes unit-norm noise) and independent of those kept before: the kept unit-norm
    elements keep their smallest singular value above 1e-2 (float64), so the change of basis
    from filters to coefficients is well conditioned. Asserts that the kept elements span the
    :func:`free_dimension`.
    """
    probe = enn.R2Conv(
        field_type(_SIZE[in_field], in_field),
        field_type(_SIZE[out_field], out_field),
        kernel_size,
        dilation=dilation,
        bias=False,
        initialize=False,
        **_basis_params(kernel_size, dilation),
    )
    (block,) = _blocks(probe)
    sampled = block.basis.double()  # (dim, o, i, S)
    # g·K = ρ_out K(F·) ρ_in⁻¹ with ρ the pair swap on a regular field
    deviation = (sampled - _mirror(sampled, kernel_size)).flatten(1).norm(dim=1)
    deviation = deviation / sampled.flatten(1).norm(dim=1)
    basis = sampled.flatten(1)  # (dim, o·i·S)
    infos = list(block.expansion.get_basis_info())
    kept: list[int] = []
    rows: list[Tensor] = []
    for row, info, dev in zip(basis, infos, deviation, strict=True):
        if dev > 1e-4:  # aliased high frequency: sampling noise normalised to unit norm
            continue
        candidate = torch.stack([*rows, row / row.norm()])
        if torch.linalg.svdvals(candidate)[-1] > 1e-2:  # independent and well conditioned
            rows.append(row / row.norm())
            kept.append(int(info["idx"]))
    expected = free_dimension(kernel_size, in_field, out_field)
    if len(kept) != expected:
        raise RuntimeError(
            f"escnn basis for a {kernel_size}×{kernel_size} {in_field}→{out_field} kernel spans "
            f"{len(kept)} of {expected} dimensions"
        )
    return frozenset(kept)


def _mirror(basis: Tensor, kernel_size: int) -> Tensor:
    """``g·B`` for sampled kernels ``B`` of shape ``(dim, o, i, k²)``: mirror the width (escnn's
    grid is ``(y, x)`` with ``x`` last) and swap the pair of a regular output / input field."""
    dim, o, i, _ = basis.shape
    mirrored = basis.reshape(dim, o, i, kernel_size, kernel_size).flip(-1)
    if o == 2:
        mirrored = mirrored.flip(1)
    if i == 2:
        mirrored = mirrored.flip(2)
    return mirrored.reshape(basis.shape)


@torch.no_grad()
def _symmetrize(basis: Tensor, kernel_size: int) -> None:
    """Project sampled kernels onto exact equivariance in place: ``B ← (B + g·B) / 2``.

    escnn samples each basis kernel in float64 and stores float32, so ``B`` and ``g·B`` can
    differ by round-off (up to ~1e-5 relative for aliased frequencies); after the projection the
    expanded filters are symmetric to the last bit and the models exactly invariant in float64.
    """
    basis.copy_((basis + _mirror(basis, kernel_size)) / 2)


def _prototype(block: nn.Module, kernel_size: int) -> nn.Module:
    """A symmetrized copy of escnn's shared ``block``, with its pseudo-inverses, made once and
    kept on the block; every layer gets its own deep copy of it."""
    proto = getattr(block, "_gcnn_prototype", None)
    if proto is None:
        proto = deepcopy_sharing(block)
        _symmetrize(proto.sampled_basis, kernel_size)
        _pinv(proto, full=True), _pinv(proto, full=False)
        block._gcnn_prototype = proto
    return proto


class _BlockwiseFilter:
    """An escnn ``basis_filter`` that keeps a different index set in each block.

    escnn applies one ``basis_filter`` to every (input representation, output representation)
    block of an ``R2Conv``, and an element's attributes do not say which block it belongs to
    (the trivial→trivial elements reappear, attributes and ``idx`` alike, in the other blocks).
    escnn's ``BlocksBasisExpansion`` builds each block's kernel basis with
    ``R2Conv._build_kernel_basis`` and filters it right after, so :class:`FullBasisR2Conv`
    sets :attr:`block` there; its constructor then checks every block's dimension.
    """

    def __init__(self, keep: dict[tuple[FieldName, FieldName], frozenset[int]]) -> None:
        self.keep = keep
        self.block: tuple[FieldName, FieldName] | None = None

    def __call__(self, attr: dict[str, Any]) -> bool:
        if self.block is None:
            raise RuntimeError("escnn filtered a basis before building it")
        return attr["idx"] in self.keep[self.block]


class FullBasisR2Conv(enn.R2Conv):
    r"""An ``R2Conv`` between two layouts whose basis spans every flip-equivariant kernel.

    ``in_type`` / ``out_type``: escnn types of trivial fields followed by regular fields
    (:func:`escnn_type`). Each block of one input and one output field kind keeps the
    :func:`independent_basis` of its kind pair; built with ``initialize=False`` (coefficients
    are zero: set them).

    The state dict is the same in train and eval mode: escnn's ``R2Conv`` keeps the expanded
    ``filter`` / ``expanded_bias`` as buffers in eval mode only, so its state-dict keys change
    with the mode. Here they, and the sampled basis (a constant that escnn shares between
    layers), are non-persistent: the state dict holds the basis coefficients ``weights``,
    ``bias`` and ``bias_expansion`` in both modes. Loading in eval mode re-expands the filter;
    checkpoints that carry the derived buffers load too.
    """

    def __init__(
        self,
        in_type: enn.FieldType,
        out_type: enn.FieldType,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        padding_mode: str = "zeros",
        bias: bool = True,
    ) -> None:
        kinds = [(i, o) for i in _present(in_type) for o in _present(out_type)]
        keep = {pair: independent_basis(kernel_size, dilation, *pair) for pair in kinds}
        # Set before R2Conv.__init__, which builds the blocks (plain attribute: no nn.Module
        # bookkeeping needed).
        self._block_filter = _BlockwiseFilter(keep)
        super().__init__(
            in_type,
            out_type,
            kernel_size,
            padding=padding,
            stride=stride,
            dilation=dilation,
            padding_mode=padding_mode,
            bias=bias,
            basis_filter=self._block_filter,
            initialize=False,
            **_basis_params(kernel_size, dilation),
        )
        # escnn caches one basis-expansion module per basis and hands the same object to every
        # layer; own a copy, so that module-tree tools (functional_call, meta tracing in
        # gcnn.exactness, to()) never see one buffer under several names.
        for name, block in list(self.basisexpansion.named_children()):
            prototype = _prototype(block, self.kernel_size)
            setattr(self.basisexpansion, name, deepcopy_sharing(prototype))
        self._check_complete(kinds)
        self.train(self.training)

    def _build_kernel_basis(self, in_repr: Representation, out_repr: Representation) -> KernelBasis:
        self._block_filter.block = (_kind(in_repr.size), _kind(out_repr.size))
        return super()._build_kernel_basis(in_repr, out_repr)

    def _check_complete(self, kinds: list[tuple[FieldName, FieldName]]) -> None:
        """Every block is present and spans :func:`free_dimension` (guards the filter)."""
        dims = {b.kinds: b.expansion.dimension() for b in _blocks(self)}
        expected = {pair: free_dimension(self.kernel_size, *pair) for pair in kinds}
        if dims != expected:
            raise RuntimeError(f"escnn built blocks of dimensions {dims}, expected {expected}")

    def _mark_derived(self) -> None:
        for name in _DERIVED_BUFFERS:
            if name in self._buffers:
                self._non_persistent_buffers_set.add(name)
        for module in self.basisexpansion.modules():
            module._non_persistent_buffers_set.update(module._buffers)

    def train(self, mode: bool = True) -> FullBasisR2Conv:
        with torch.no_grad():  # escnn expands the eval-mode filter with autograd on
            super().train(mode)
        self._mark_derived()
        return self

    def conv_fields(self) -> ConvFields:
        """The output layout and the input layout of this conv."""
        return ConvFields(fields_of(self.out_type), fields_of(self.in_type))

    def free_weights(self) -> FreeWeights:
        r"""The free weights of :mod:`gcnn.nn.expansion` from the basis coefficients.

        The filter of field pair ``(p, q)`` (output field ``p``, input field ``q``) of a block
        is ``Σ_b c[p, q, b] B[b]``; its free entries (:func:`_free_part`) are one matmul with
        that part of the basis. ``pairs`` joins the trivial→regular and regular→regular
        blocks along the input channels (trivial inputs first), ``invariant`` is the
        regular→trivial block, ``symmetric`` the trivial→trivial one.
        """
        parts = {b.kinds: self._block_free_weight(b) for b in _blocks(self)}
        pairs = [parts[(kind, "regular")] for kind in _KINDS if (kind, "regular") in parts]
        return FreeWeights(
            pairs=(pairs[0] if len(pairs) == 1 else torch.cat(pairs, dim=1)) if pairs else None,
            invariant=parts.get(("regular", "trivial")),
            symmetric=parts.get(("trivial", "trivial")),
        )

    def _block_free_weight(self, block: _Block) -> Tensor:
        """``(n_out, n_in·i, k, k)`` (``⌈k/2⌉`` columns for trivial→trivial)."""
        k = self.kernel_size
        width = (k + 1) // 2 if block.kinds == ("trivial", "trivial") else k
        coeffs = self.weights[block.coefficients].view(block.n_out, block.n_in, -1)
        return (coeffs @ _free_part(block.basis)).view(block.n_out, -1, k, width)

    def expand_parameters(self) -> tuple[Tensor, Tensor | None]:
        r"""The filter ``(out, in, k, k)`` and bias ``(out,)``: escnn's expansion, faster.

        Same linear map as escnn's ``BlocksBasisExpansion``,
        ``W[p·o + a, q·i + c] = Σ_b w[p, q, b] B[b, a, c]`` in each block, which escnn computes
        as an einsum over every row of a field, a transpose copy and a scatter of the blocks
        into the filter. The (symmetrized) basis is exactly equivariant, so only the free
        weights are computed (:meth:`free_weights`) and expanded as in
        :class:`gcnn.nn.FlipConv2d`. Tested against escnn's own expansion.
        """
        weight = expand_conv_weight(self.free_weights(), self.conv_fields(), self.kernel_size)
        bias = None if self.bias is None else self.bias_expansion @ self.bias
        return weight, bias

    @torch.no_grad()
    def refresh(self) -> None:
        """Re-expand the eval-mode ``filter`` / ``expanded_bias`` from the parameters."""
        if self.training:
            return
        weight, bias = self.expand_parameters()
        self.filter.copy_(weight)
        if bias is not None:
            self.expanded_bias.copy_(bias)

    def _load_from_state_dict(  # type: ignore[override]
        self, state_dict: dict[str, Tensor], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        for key in [k for k in state_dict if k.startswith(prefix)]:
            rest = key[len(prefix) :]
            if rest in _DERIVED_BUFFERS or rest.startswith("_basisexpansion."):
                del state_dict[key]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.refresh()


def _present(field_type: enn.FieldType) -> list[FieldName]:
    """The field kinds that occur in ``field_type`` (trivial first)."""
    return [kind for kind, n in zip(_KINDS, _counts(fields_of(field_type)), strict=True) if n]


def full_basis_r2conv(
    in_type: enn.FieldType,
    out_type: enn.FieldType,
    kernel_size: int,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    padding_mode: str = "zeros",
    bias: bool = True,
) -> FullBasisR2Conv:
    """An R2Conv from ``in_type`` to ``out_type`` (each: trivial fields, then regular fields,
    :func:`escnn_type`) whose basis spans every flip-equivariant kernel; built with
    ``initialize=False`` (parameters are zero: set them)."""
    return FullBasisR2Conv(
        in_type,
        out_type,
        kernel_size,
        stride=stride,
        padding=padding,
        dilation=dilation,
        padding_mode=padding_mode,
        bias=bias,
    )


def _set_bias(conv: enn.R2Conv, bias: Tensor) -> None:
    """Solve ``bias_expansion @ conv.bias = bias``: each column of the expansion (one trivial
    component of one output field) has its own support, so least squares is per column."""
    if conv.bias is None:
        raise ValueError("the escnn conv has no bias")
    expansion = conv.bias_expansion.to(bias)
    conv.bias.copy_((expansion.T @ bias.detach()) / expansion.square().sum(0))


@torch.no_grad()
def set_conv_filter(conv: enn.R2Conv, weight: Tensor, bias: Tensor | None = None) -> float:
    """Set ``conv``'s coefficients to the least-squares fit of the filter ``weight``.

    ``weight`` has shape ``(out, in, k, k)`` and may be any filter (e.g. a plain conv's). In
    each block the escnn filter of field pair ``(p, q)`` is ``Σ_b c[p, q, b] B_b`` with the
    sampled basis ``B`` of shape ``(dim, o, i, k²)``, so ``c = T B⁺`` (``T``: the block's part
    of ``weight``, one row per field pair) is the orthogonal projection onto equivariant
    filters. Returns the largest absolute residual of filter and bias (0 up to round-off when
    ``weight`` is equivariant).
    """
    fields_out, fields_in = fields_of(conv.out_type), fields_of(conv.in_type)
    for block in _blocks(conv):
        in_kind, out_kind = block.kinds
        _, o, i, s = block.basis.shape
        t_out, t_in = fields_out.trivial, fields_in.trivial
        part = weight.detach()[_channels(t_out, out_kind), _channels(t_in, in_kind)]
        target = part.reshape(block.n_out, o, block.n_in, i, s).transpose(1, 2)
        rows = target.reshape(block.n_out * block.n_in, o * i * s).double()
        coeffs = rows @ _pinv(block.expansion, full=True).to(rows.device)
        conv.weights[block.coefficients] = coeffs.reshape(-1).to(conv.weights)
    if bias is not None:
        _set_bias(conv, bias)
    return _refresh_and_residual(conv, weight, bias)


@torch.no_grad()
def set_conv_free_weight(
    conv: enn.R2Conv, free: FreeWeights, bias: Tensor | None = None, check: bool = True
) -> float:
    """Set ``conv``'s coefficients from the free weights of a :class:`FlipConv2d` (exact).

    An equivariant kernel block is fixed by its free entries (:func:`_free_part`), and the
    basis restricted to them, ``B₀`` of shape ``(dim, dim)``, is invertible: ``c = w B₀⁻¹``
    per block, with no reshuffling of the (large) weight. ``free`` holds the blocks of
    :mod:`gcnn.nn.expansion` (``pairs``: trivial input columns, then pair columns);
    ``bias`` is the full ``(out,)`` bias. With ``check``, returns the largest absolute residual
    against the expanded filter, else 0.
    """
    fields = ConvFields(fields_of(conv.out_type), fields_of(conv.in_type))
    for block in _blocks(conv):
        part = _free_block(free, block.kinds, fields.local_in.trivial)
        rows = part.detach().reshape(block.n_out * block.n_in, -1).double()
        coeffs = rows @ _pinv(block.expansion, full=False).to(rows.device)  # float64, rounded
        conv.weights[block.coefficients] = coeffs.reshape(-1).to(conv.weights)
    if bias is not None:
        _set_bias(conv, bias)
    if not check:
        if isinstance(conv, FullBasisR2Conv):
            conv.refresh()
        return 0.0
    full = expand_conv_weight(free, fields, conv.kernel_size)
    return _refresh_and_residual(conv, full, bias)


def _free_block(free: FreeWeights, kinds: tuple[FieldName, FieldName], t_in: int) -> Tensor:
    """The free weight of one block (``kinds``: input, output kind) out of the layer's."""
    in_kind, out_kind = kinds
    if out_kind == "regular":
        block = free.pairs if free.pairs is None else free.pairs[:, _channels(t_in, in_kind)]
    else:
        block = free.invariant if in_kind == "regular" else free.symmetric
    if block is None:
        raise ValueError(f"the free weights have no {in_kind}→{out_kind} block")
    return block


def _refresh_and_residual(conv: enn.R2Conv, weight: Tensor, bias: Tensor | None) -> float:
    if isinstance(conv, FullBasisR2Conv):
        conv.refresh()
    new_weight, new_bias = conv.expand_parameters()
    err = (new_weight - weight).abs().max().item()
    if bias is not None:
        err = max(err, (new_bias - bias).abs().max().item())
    return err


def _pinv(block: nn.Module, full: bool) -> Tensor:
    """Pseudo-inverse (float64, cached on the block) of its sampled basis ``(dim, o, i, S)``:
    of ``(dim, o·i·S)`` when ``full``, else of its free entries (:func:`_free_part`), a square
    ``(dim, dim)`` matrix."""
    name = "_gcnn_pinv_full" if full else "_gcnn_pinv_free"
    pinv = getattr(block, name, None)
    if pinv is None:
        basis = block.sampled_basis.double()
        matrix = basis.reshape(basis.shape[0], -1) if full else _free_part(basis)
        pinv = torch.linalg.pinv(matrix)
        setattr(block, name, pinv)
    return pinv
