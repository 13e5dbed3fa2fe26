r"""The complete flip-equivariant kernel basis for escnn's ``R2Conv`` on ``flip2dOnR2`` fields.

Field types: ``C`` channels of a ``"regular"`` field are ``C/2`` copies of the regular
representation of the flip group (interleaved pairs ``(2k, 2k+1)``, which the flip swaps);
a ``"trivial"`` field is ``C`` copies of the trivial representation.

escnn's default basis for a 3×3 regular→regular kernel is band-limited: it spans 12 of the 18
dimensions of flip-equivariant kernels. :func:`full_basis_r2conv` samples the harmonic basis on
one ring per distinct radius of the grid, with angular frequencies up to the kernel size, and
keeps a linearly independent subset (greedy, lowest frequency first) through ``basis_filter``.
The result spans *every* equivariant kernel with no redundant parameter: ``o·i·k²/2``
coefficients per field pair (18 for a 3×3 regular→regular pair, 49 for the 7×7 trivial→regular
stem), exactly the free parameters of :class:`gcnn.nn.FlipConv2d`. Hence the hand-written →
escnn conversion is an exact linear solve (residual at float32 round-off).

Filters are expanded from the coefficients into the free weights of :mod:`gcnn.nn.expansion`
(the first row of each output pair, or the first column of each input pair) and from there by
the same :func:`~gcnn.nn.expansion.expand_conv_weight` as the hand-written layers.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch
from escnn import gspaces
from escnn import nn as enn
from escnn.gspaces import GSpace2D
from torch import Tensor, nn

from gcnn.escnn.sharing import deepcopy_sharing
from gcnn.nn import Fields
from gcnn.nn.expansion import ConvFields, FreeWeights, expand_conv_weight
from gcnn.nn.fields import FieldType as FieldName
from gcnn.nn.fields import check_field_type

# Buffers of R2Conv that are functions of its parameters (present only in eval mode).
_DERIVED_BUFFERS = ("filter", "expanded_bias")


@functools.cache
def flip_gspace() -> GSpace2D:
    """escnn's ``flip2dOnR2()``: the flip ``x.flip(-1)`` acting on the plane (axis π/2)."""
    return gspaces.flip2dOnR2()


@functools.cache
def field_type(channels: int, field: FieldName) -> enn.FieldType:
    """The escnn type of ``channels`` channels: ``channels/2`` regular or ``channels`` trivial."""
    check_field_type(field)
    gs = flip_gspace()
    if field == "regular":
        if channels % 2:
            raise ValueError(f"a regular field needs an even number of channels, got {channels}")
        return enn.FieldType(gs, (channels // 2) * [gs.regular_repr])
    return enn.FieldType(gs, channels * [gs.trivial_repr])


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

    ``o·i·k²/2`` for field sizes ``o, i`` (a regular field has size 2): the flip pairs pixel
    ``x`` with its mirror ``Fx`` and the constraint ``K(Fx) = ρ_out K(x) ρ_in⁻¹`` halves the
    entries (on the mirror axis it halves the entries of the fixed pixel's block).
    """
    size = {"regular": 2, "trivial": 1}
    if in_field == out_field == "trivial":
        raise ValueError(
            "the escnn backend has no trivial→trivial kernels (the hand-written FlipConv2d has)"
        )
    return size[out_field] * size[in_field] * kernel_size**2 // 2


def _single_block(conv: enn.R2Conv) -> nn.Module:
    """The one block expansion of an R2Conv between homogeneous field types."""
    blocks = [m for name, m in conv.basisexpansion.named_children() if "block_expansion" in name]
    if len(blocks) != 1:
        raise ValueError(f"expected one (in_repr, out_repr) block, got {len(blocks)}")
    return blocks[0]


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
        field_type(2 if in_field == "regular" else 1, in_field),
        field_type(2 if out_field == "regular" else 1, out_field),
        kernel_size,
        dilation=dilation,
        bias=False,
        initialize=False,
        **_basis_params(kernel_size, dilation),
    )
    block = _single_block(probe)
    sampled = block.sampled_basis.double()  # (dim, o, i, S)
    # g·K = ρ_out K(F·) ρ_in⁻¹ with ρ the pair swap on a regular field
    deviation = (sampled - _mirror(sampled, kernel_size)).flatten(1).norm(dim=1)
    deviation = deviation / sampled.flatten(1).norm(dim=1)
    basis = sampled.flatten(1)  # (dim, o·i·S)
    infos = list(block.get_basis_info())
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


class FullBasisR2Conv(enn.R2Conv):
    r"""An ``R2Conv`` whose state dict is the same in train and eval mode.

    escnn's ``R2Conv`` keeps the expanded ``filter`` / ``expanded_bias`` as buffers in eval mode
    only, so its state-dict keys change with the mode. Here they, and the sampled basis (a
    constant that escnn shares between layers), are non-persistent: the state dict holds the
    basis coefficients ``weights``, ``bias`` and ``bias_expansion`` in both modes. Loading in
    eval mode re-expands the filter; checkpoints that carry the derived buffers load too.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # escnn caches one basis-expansion module per basis and hands the same object to every
        # layer; own a copy, so that module-tree tools (functional_call, meta tracing in
        # gcnn.exactness, to()) never see one buffer under several names.
        for name, block in list(self.basisexpansion.named_children()):
            prototype = _prototype(block, self.kernel_size)
            setattr(self.basisexpansion, name, deepcopy_sharing(prototype))
        self.train(self.training)

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
        """The output layout and the input layout of this (homogeneous) conv."""
        return ConvFields(_fields_of(self.out_type), _fields_of(self.in_type))

    def free_weights(self) -> FreeWeights:
        r"""The free weights of :mod:`gcnn.nn.expansion` from the basis coefficients.

        The filter of block ``(p, q)`` (output field ``p``, input field ``q``) is
        ``Σ_b w[p, q, b] B[b]``; its first row (regular output) or first column (regular input,
        trivial output) is all the expansion needs: one matmul with that row of the basis.
        """
        basis = _single_block(self).sampled_basis  # (dim, o, i, S)
        dim, o, i, _ = basis.shape
        n_out, n_in = self.out_type.size // o, self.in_type.size // i
        k = self.kernel_size
        coeffs = self.weights.view(n_out, n_in, dim)
        if o == 2:  # the first row of each output pair: (n_out, n_in·i, k, k)
            return FreeWeights(pairs=(coeffs @ basis[:, 0].reshape(dim, -1)).view(n_out, -1, k, k))
        first = (coeffs @ basis[:, 0, 0]).view(n_out, n_in, k, k)
        if i == 2:  # trivial output, regular input: the first column of each input pair
            return FreeWeights(invariant=first)
        return FreeWeights(symmetric=first[..., : (k + 1) // 2])  # left half

    def expand_parameters(self) -> tuple[Tensor, Tensor | None]:
        r"""The filter ``(out, in, k, k)`` and bias ``(out,)``: escnn's expansion, faster.

        Same linear map as escnn's ``BlocksBasisExpansion`` for one (in, out) block type,
        ``W[p·o + a, q·i + c] = Σ_b w[p, q, b] B[b, a, c]``, which escnn computes as an einsum
        over both rows ``a`` of a regular output field and a transpose copy of the filter.
        The (symmetrized) basis is exactly equivariant, so only the free weights are computed
        (:meth:`free_weights`) and expanded as in :class:`gcnn.nn.FlipConv2d`. Tested against
        escnn's own expansion.
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
    """An R2Conv from ``in_type`` to ``out_type`` (homogeneous) whose basis spans every
    flip-equivariant kernel; built with ``initialize=False`` (parameters are zero: set them)."""
    names = {"regular": flip_gspace().regular_repr.name, "trivial": flip_gspace().trivial_repr.name}
    by_repr = {v: k for k, v in names.items()}
    fields = []
    for t in (in_type, out_type):
        reprs = {r.name for r in t.representations}
        if len(reprs) != 1 or next(iter(reprs)) not in by_repr:
            raise ValueError(f"need a field type of only regular or only trivial fields, got {t}")
        fields.append(by_repr[next(iter(reprs))])
    keep = independent_basis(kernel_size, dilation, fields[0], fields[1])
    return FullBasisR2Conv(
        in_type,
        out_type,
        kernel_size,
        padding=padding,
        stride=stride,
        dilation=dilation,
        padding_mode=padding_mode,
        bias=bias,
        basis_filter=lambda attr, keep=keep: attr["idx"] in keep,
        initialize=False,
        **_basis_params(kernel_size, dilation),
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

    ``weight`` has shape ``(out, in, k, k)`` and may be any filter (e.g. a plain conv's): the
    escnn filter of block ``(p, q)`` (output field ``p``, input field ``q``) is
    ``Σ_b c[p·n_in + q, b] B_b`` with the sampled basis ``B`` of shape ``(dim, o, i, k²)``, so
    ``c = T B⁺`` is the orthogonal projection onto equivariant filters. Returns the largest
    absolute residual of filter and bias (0 up to round-off when ``weight`` is equivariant).
    """
    block = _single_block(conv)
    dim, o, i, s = block.sampled_basis.shape
    n_out, n_in = weight.shape[0] // o, weight.shape[1] // i
    target = weight.detach().reshape(n_out, o, n_in, i, s).transpose(1, 2)
    coeffs = target.reshape(n_out * n_in, o * i * s) @ _pinv(block, full=True).to(target)
    conv.weights.copy_(coeffs.reshape(-1))
    if bias is not None:
        _set_bias(conv, bias)
    return _refresh_and_residual(conv, weight, bias)


@torch.no_grad()
def set_conv_free_weight(
    conv: enn.R2Conv, free: Tensor, bias: Tensor | None = None, check: bool = True
) -> float:
    """Set ``conv``'s coefficients from the free weight of a :class:`FlipConv2d` (exact).

    An equivariant kernel block is fixed by its first output row (regular output: ``free`` is
    ``W[0::2]``, shape ``(n_out, in, k, k)``) or its first input column (trivial output,
    regular input: ``free`` is ``W[:, 0::2]``), and the basis restricted to that row or column,
    ``B₀`` of shape ``(dim, dim)``, is invertible: ``c = w B₀⁻¹`` with no reshuffling of the
    (large) weight. ``bias`` is the full ``(out,)`` bias. With ``check``, returns the largest
    absolute residual against the full filter, else 0.
    """
    block = _single_block(conv)
    dim = block.sampled_basis.shape[0]
    rows = free.detach().reshape(-1, dim)  # (n_out·n_in, dim): block (p, q) is row p·n_in + q
    coeffs = rows.double() @ _pinv(block, full=False).to(rows.device)  # float64, then rounded
    conv.weights.copy_(coeffs.reshape(-1))
    if bias is not None:
        _set_bias(conv, bias)
    if not check:
        if isinstance(conv, FullBasisR2Conv):
            conv.refresh()
        return 0.0
    fields = ConvFields(_fields_of(conv.out_type), _fields_of(conv.in_type))
    o, i = block.sampled_basis.shape[1:3]
    name = "pairs" if o == 2 else "invariant" if i == 2 else "symmetric"
    if name == "symmetric":
        free = free[..., : (free.shape[-1] + 1) // 2]
    full = expand_conv_weight(FreeWeights(**{name: free}), fields, free.shape[-1])
    return _refresh_and_residual(conv, full, bias)


def _fields_of(field_type: enn.FieldType) -> Fields:
    """The :class:`~gcnn.nn.Fields` layout of an escnn field type of trivial and regular
    fields (trivial ones first)."""
    sizes = [r.size for r in field_type.representations]
    trivial = sizes.count(1)
    if sizes != [1] * trivial + [2] * (len(sizes) - trivial):
        raise ValueError(f"need trivial fields, then regular ones: {field_type}")
    return Fields(trivial=trivial, regular=len(sizes) - trivial)


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
    of ``(dim, o·i·S)`` when ``full``, else of the first output row (``o == 2``) or first
    input column (``o == 1``), a square ``(dim, dim)`` matrix."""
    name = "_gcnn_pinv_full" if full else "_gcnn_pinv_free"
    pinv = getattr(block, name, None)
    if pinv is None:
        basis = block.sampled_basis.double()
        if not full:
            basis = basis[:, 0] if basis.shape[1] == 2 else basis[:, :, 0]
        pinv = torch.linalg.pinv(basis.reshape(basis.shape[0], -1))
        setattr(block, name, pinv)
    return pinv
