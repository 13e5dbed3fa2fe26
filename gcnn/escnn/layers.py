r"""escnn layers on ``flip2dOnR2`` fields that take and return plain tensors.

Each layer wraps one escnn module (``R2Conv``, ``InnerBatchNorm``, ``ReLU``,
``PointwiseMaxPool2D``, ``PointwiseAdaptiveAvgPool2D``) so that it is a drop-in for the
hand-written layer of :mod:`gcnn.nn` inside an unchanged torchvision / gcnn container:
``forward`` wraps the ``(B, C, H, W)`` tensor in a ``GeometricTensor`` of the layer's field type
and unwraps the result. Every layer can ``export()`` itself to plain torch, convert ``to_flip()``
to the hand-written layer, and be built ``from_flip()`` one, all with identical outputs.

Field types: ``C`` channels of a ``"regular"`` field are ``C/2`` copies of the regular
representation of the flip group (interleaved pairs ``(2k, 2k+1)``, which the flip swaps);
a ``"trivial"`` field is ``C`` copies of the trivial representation.

**The kernel basis.** escnn's default basis for a 3×3 regular→regular kernel is band-limited: it
spans 12 of the 18 dimensions of flip-equivariant kernels. :func:`full_basis_r2conv` samples the
harmonic basis on one ring per distinct radius of the grid, with angular frequencies up to the
kernel size, and keeps a linearly independent subset (greedy, lowest frequency first) through
``basis_filter``. The result spans *every* equivariant kernel with no redundant parameter:
``o·i·k²/2`` coefficients per field pair (18 for a 3×3 regular→regular pair, 49 for the 7×7
trivial→regular stem), exactly the free parameters of :class:`gcnn.nn.FlipConv2d`. Hence the
hand-written → escnn conversion is an exact linear solve (residual at float32 round-off).
"""

from __future__ import annotations

import copy
import functools
import math
from typing import Any

import numpy as np
import torch
from escnn import gspaces
from escnn import nn as enn
from escnn.group import Group, Representation
from escnn.gspaces import GSpace, GSpace2D
from escnn.kernels import KernelBasis
from torch import Tensor, nn

from gcnn.nn import Fields, FlipBatchNorm2d, FlipConv2d, FlipModule, InvariantLinear
from gcnn.nn.fields import FieldType as FieldName
from gcnn.nn.fields import check_field_type

# escnn's field types, gspaces, groups, representations and kernel bases are immutable, but a
# deep copy of a module would copy them and the whole group and representation graph behind
# them (most of the time of copying a model). Deep copies share them instead (escnn defines no
# __deepcopy__ for them).
for _immutable in (enn.FieldType, GSpace, Group, Representation, KernelBasis):
    if "__deepcopy__" not in vars(_immutable):
        _immutable.__deepcopy__ = lambda self, memo: self  # type: ignore[method-assign]

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
        raise ValueError("trivial→trivial kernels are not used by gcnn")
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
        proto = copy.deepcopy(block)
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
            setattr(self.basisexpansion, name, copy.deepcopy(_prototype(block, self.kernel_size)))
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

    def expand_parameters(self) -> tuple[Tensor, Tensor | None]:
        r"""The filter ``(out, in, k, k)`` and bias ``(out,)``: escnn's expansion, faster.

        Same linear map as escnn's ``BlocksBasisExpansion`` for one (in, out) block type,
        ``W[p·o + a, q·i + c] = Σ_b w[p, q, b] B[b, a, c]``, which escnn computes as an einsum
        over both rows ``a`` of a regular output field and a transpose copy of the filter.
        The (symmetrized) basis satisfies ``B[:, 1] = F S B[:, 0]`` exactly, so only row 0 is
        expanded (one matmul) and row 1 is its mirror, as in :class:`gcnn.nn.FlipConv2d`.
        Tested against escnn's own expansion.
        """
        basis = _single_block(self).sampled_basis  # (dim, o, i, S)
        dim, o, i, _ = basis.shape
        n_out, n_in = self.out_type.size // o, self.in_type.size // i
        k = self.kernel_size
        coeffs = self.weights.view(n_out, n_in, dim)
        row0 = (coeffs @ basis[:, 0].reshape(dim, -1)).view(n_out, n_in * i, k, k)
        if o == 1:
            weight = row0
        else:
            swapped = row0 if i == 1 else row0.unflatten(1, (-1, 2)).flip(2).flatten(1, 2)
            mirror = swapped.flip(-1)  # F S w
            weight = torch.stack((row0, mirror), dim=1).flatten(0, 1)
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
    o = block.sampled_basis.shape[1]
    if o == 2:  # regular output: interleave w with its mirror F S w
        i = block.sampled_basis.shape[2]
        mirror = free.unflatten(1, (-1, 2)).flip(2, -1).flatten(1, 2) if i == 2 else free.flip(-1)
        full = torch.stack((free, mirror), dim=1).flatten(0, 1)
    else:
        full = torch.stack((free, free.flip(-1)), dim=2).flatten(1, 2)
    return _refresh_and_residual(conv, full, bias)


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


def _as_int(value: int | tuple[int, ...] | str, name: str) -> int:
    """A symmetric (h == w) hyper-parameter as one int; escnn's R2Conv is square."""
    if isinstance(value, str):
        raise ValueError(f"the escnn backend needs integer {name}, got {value!r}")
    if isinstance(value, int):
        return value
    if len(set(value)) != 1:
        raise ValueError(f"the escnn backend needs a square {name}, got {value}")
    return int(value[0])


class EscnnConv2d(FlipModule):
    r"""Flip-equivariant conv built on escnn's ``R2Conv``: a drop-in for :class:`FlipConv2d`.

    Input ``(B, in_channels, H, W)`` (``in_type`` field), output ``(B, out_channels, H', W')``
    (``out_type`` field), as :class:`torch.nn.Conv2d`. The filter is
    ``W = Σ_b c_b B_b`` over the complete equivariant basis of :func:`full_basis_r2conv`, so it
    satisfies ``W = F S_out W S_in`` (``F`` mirrors the kernel width, ``S`` swaps pairs) and
    ranges over exactly the filters of the hand-written :class:`FlipConv2d`.
    ``groups`` must be 1 and kernel, stride, padding and dilation square.
    """

    reports_as_leaf = True  # gcnn.exactness names this module, not its escnn child
    projection_error: float = 0.0  # residual of the last from_flip change of basis

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        in_type: FieldName = "regular",
        out_type: FieldName = "regular",
    ) -> None:
        super().__init__()
        self.in_type = check_field_type(in_type, "in_type")
        self.out_type = check_field_type(out_type, "out_type")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = kernel_size, stride
        self.padding, self.dilation, self.padding_mode = padding, dilation, padding_mode
        self.conv = full_basis_r2conv(
            field_type(in_channels, in_type),
            field_type(out_channels, out_type),
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            padding_mode=padding_mode,
            bias=bias,
        )

    @property
    def in_fields(self) -> Fields:
        return Fields.of(self.in_type, self.in_channels)

    @property
    def out_fields(self) -> Fields:
        return Fields.of(self.out_type, self.out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(enn.GeometricTensor(x, self.conv.in_type)).tensor

    def full_weight(self) -> Tensor:
        """The expanded filter, shape ``(out_channels, in_channels, k, k)`` (differentiable)."""
        return self.conv.expand_parameters()[0]

    def full_bias(self) -> Tensor | None:
        """The expanded bias, shape ``(out_channels,)`` (shared inside pairs), or ``None``."""
        return self.conv.expand_parameters()[1]

    @torch.no_grad()
    def export(self) -> nn.Conv2d:
        """A plain :class:`torch.nn.Conv2d` with the expanded filter: identical outputs.

        Unlike escnn's ``R2Conv.export()``, this does not switch ``self`` to eval mode; the
        result has ``self``'s mode.
        """
        weight, bias = self.conv.expand_parameters()
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            bias=bias is not None,
            padding_mode=self.padding_mode,
            device=weight.device,
            dtype=weight.dtype,
        )
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
        return conv.train(self.training)

    def to_flip(self) -> FlipConv2d:
        """The hand-written :class:`FlipConv2d` with this filter (its free weight is the even
        output filters, or the even input columns for a trivial output): the exported plain
        conv taken back by :meth:`FlipConv2d.from_conv`."""
        return FlipConv2d.from_conv(self.export(), in_type=self.in_type, out_type=self.out_type)

    @classmethod
    @torch.no_grad()
    def from_flip(cls, flip: FlipConv2d, check: bool = True) -> EscnnConv2d:
        """The escnn conv with ``flip``'s filter: exact (residual at float32 round-off, stored
        in ``projection_error`` when ``check``)."""
        if flip.groups != 1:
            raise NotImplementedError("the escnn backend supports groups=1 only")
        out = cls(
            flip.in_channels,
            flip.out_channels,
            _as_int(flip.kernel_size, "kernel_size"),
            stride=_as_int(flip.stride, "stride"),
            padding=_as_int(flip.padding, "padding"),
            dilation=_as_int(flip.dilation, "dilation"),
            bias=flip.bias is not None,
            padding_mode=flip.padding_mode,
            in_type=flip.in_type,
            out_type=flip.out_type,
        ).to(flip.weight)
        out.projection_error = set_conv_free_weight(
            out.conv, flip.weight, flip.full_bias(), check=check
        )
        return out.train(flip.training)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, {self.in_type}→{self.out_type}"
        )


@functools.cache
def _inner_batchnorm_prototype(
    channels: int, eps: float, momentum: float | None, affine: bool, track_running_stats: bool
) -> enn.InnerBatchNorm:
    """A freshly initialised InnerBatchNorm to deep-copy (escnn's constructor is slow: it sorts
    the fields by size in Python). Never handed out itself."""
    return enn.InnerBatchNorm(
        field_type(channels, "regular"),
        eps=eps,
        momentum=momentum,
        affine=affine,
        track_running_stats=track_running_stats,
    )


class EscnnBatchNorm2d(FlipModule):
    r"""escnn's ``InnerBatchNorm`` on a regular field: a drop-in for :class:`FlipBatchNorm2d`.

    Input and output ``(B, C, H, W)``; each pair ``(2k, 2k+1)`` is normalised with one mean and
    variance over batch, both channels and space (a ``BatchNorm3d`` on ``(B, C/2, 2, H, W)``),
    with one weight and bias per pair.
    """

    reports_as_leaf = True  # gcnn.exactness names this module, not its escnn child

    def __init__(
        self,
        num_channels: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.bn = copy.deepcopy(
            _inner_batchnorm_prototype(num_channels, eps, momentum, affine, track_running_stats)
        )

    @property
    def in_fields(self) -> Fields:
        return Fields.of("regular", self.num_channels)

    @property
    def out_fields(self) -> Fields:
        return self.in_fields

    @property
    def inner(self) -> nn.modules.batchnorm._BatchNorm:
        """The ``BatchNorm3d`` over the ``C/2`` pairs inside the escnn module."""
        return getattr(self.bn, "batch_norm_[2]")

    def forward(self, x: Tensor) -> Tensor:
        # InnerBatchNorm's forward normalises the view (B, C/2, 2, H, W) with its BatchNorm3d
        # and copies the result into a new tensor; for one field type the copy is not needed,
        # so the BatchNorm3d runs on the view directly (same module, same parameters and
        # statistics; tested against InnerBatchNorm.forward). A channels_last input (gcnn train
        # on CUDA) is made contiguous for the view.
        b, c, h, w = enn.GeometricTensor(x, self.bn.in_type).tensor.shape
        return self.inner(x.contiguous().view(b, c // 2, 2, h, w)).view(b, c, h, w)

    @torch.no_grad()
    def _copy_to(self, bn: nn.modules.batchnorm._BatchNorm, repeat: int) -> None:
        inner = self.inner
        if inner.affine:
            bn.weight.copy_(inner.weight.repeat_interleave(repeat))
            bn.bias.copy_(inner.bias.repeat_interleave(repeat))
        if inner.track_running_stats:
            bn.running_mean.copy_(inner.running_mean.repeat_interleave(repeat))
            bn.running_var.copy_(inner.running_var.repeat_interleave(repeat))
            bn.num_batches_tracked.copy_(inner.num_batches_tracked)

    def _settings(self) -> dict[str, Any]:
        inner = self.inner
        ref = inner.weight if inner.affine else inner.running_mean
        return {
            "eps": inner.eps,
            "momentum": inner.momentum,
            "affine": inner.affine,
            "track_running_stats": inner.track_running_stats,
            "device": None if ref is None else ref.device,
            "dtype": None if ref is None else ref.dtype,
        }

    def export(self) -> nn.BatchNorm2d:
        """A plain :class:`torch.nn.BatchNorm2d` with pair parameters repeated (identical in
        eval mode; in train mode on flip-closed batches, see :meth:`FlipBatchNorm2d.export`)."""
        bn = nn.BatchNorm2d(self.num_channels, **self._settings())
        self._copy_to(bn, 2)
        return bn.train(self.training)

    def to_flip(self) -> FlipBatchNorm2d:
        """The hand-written :class:`FlipBatchNorm2d` with the same parameters and statistics."""
        bn = FlipBatchNorm2d(self.num_channels, **self._settings())
        self._copy_to(bn, 1)
        return bn.train(self.training)

    @classmethod
    @torch.no_grad()
    def from_flip(cls, flip: FlipBatchNorm2d) -> EscnnBatchNorm2d:
        """The escnn BatchNorm with ``flip``'s parameters and statistics: identical outputs."""
        out = cls(flip.num_channels, flip.eps, flip.momentum, flip.affine, flip.track_running_stats)
        ref = flip.weight if flip.affine else flip.running_mean
        if ref is not None:
            out = out.to(ref)
        inner = out.inner
        if flip.affine:
            inner.weight.copy_(flip.weight)
            inner.bias.copy_(flip.bias)
        if flip.track_running_stats:
            inner.running_mean.copy_(flip.running_mean)
            inner.running_var.copy_(flip.running_var)
            inner.num_batches_tracked.copy_(flip.num_batches_tracked)
        return out.train(flip.training)

    def extra_repr(self) -> str:
        return f"{self.num_channels} (pairs={self.num_channels // 2})"


class EscnnInvariantLinear(FlipModule):
    r"""Invariant head: escnn 1×1 ``R2Conv`` from a regular to a trivial field on a 1×1 map.

    Input ``(B, in_features)`` (pairs interleaved), output ``(B, out_features)``. The only
    equivariant 1×1 kernels regular→trivial have ``W[:, 2k] = W[:, 2k+1]``: mean pair pooling
    and a linear map, the same function class as :class:`gcnn.nn.InvariantLinear`.
    (escnn's ``GroupPooling`` takes the *max* over each pair; a max cannot be exported to the
    plain ``Linear`` head of VGG / ResNet, so the head uses this invariant map instead.)
    """

    reports_as_leaf = True  # gcnn.exactness names this module, not its escnn child
    projection_error: float = 0.0  # residual of the last from_flip change of basis

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.conv = full_basis_r2conv(
            field_type(in_features, "regular"), field_type(out_features, "trivial"), 1, bias=bias
        )

    @property
    def in_fields(self) -> Fields:
        return Fields.of("regular", self.in_features)

    @property
    def out_fields(self) -> Fields:
        return Fields(trivial=self.out_features)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(enn.GeometricTensor(x[:, :, None, None], self.conv.in_type))
        return y.tensor.flatten(1)

    def full_weight(self) -> Tensor:
        """The weight of shape ``(out_features, in_features)`` (differentiable)."""
        return self.conv.expand_parameters()[0][:, :, 0, 0]

    @torch.no_grad()
    def export(self) -> nn.Linear:
        """A plain :class:`torch.nn.Linear`: identical outputs."""
        weight, bias = self.conv.expand_parameters()
        lin = nn.Linear(
            self.in_features,
            self.out_features,
            bias=bias is not None,
            device=weight.device,
            dtype=weight.dtype,
        )
        lin.weight.copy_(weight[:, :, 0, 0])
        if bias is not None:
            lin.bias.copy_(bias)
        return lin.train(self.training)

    @torch.no_grad()
    def to_flip(self) -> InvariantLinear:
        """The hand-written :class:`InvariantLinear` (free weight: the even columns)."""
        weight, bias = self.conv.expand_parameters()
        inv = InvariantLinear(
            self.in_features,
            self.out_features,
            bias=bias is not None,
            device=weight.device,
            dtype=weight.dtype,
        )
        inv.weight.copy_(weight[:, 0::2, 0, 0])
        if bias is not None:
            inv.bias.copy_(bias)
        return inv.train(self.training)

    @classmethod
    @torch.no_grad()
    def from_flip(cls, inv: InvariantLinear, check: bool = True) -> EscnnInvariantLinear:
        """The escnn head with ``inv``'s weights: exact (``projection_error`` when ``check``)."""
        out = cls(inv.in_features, inv.out_features, bias=inv.bias is not None).to(inv.weight)
        free = inv.weight[:, :, None, None]  # W[:, 2j] = W[:, 2j+1] = u[:, j]
        out.projection_error = set_conv_free_weight(out.conv, free, inv.bias, check=check)
        return out.train(inv.training)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, regular→trivial"


class EscnnPointwise(FlipModule):
    r"""A pointwise escnn module (``ReLU``, ``PointwiseMaxPool2D``, ``PointwiseAdaptiveAvgPool2D``)
    that accepts a regular field of any width.

    torchvision reuses one ``relu`` on feature maps of different widths, while an escnn module is
    typed by its input field; the escnn module for ``C`` channels is built on first use (they
    hold no parameters or buffers). Shapes as the torch module ``kind`` names.
    """

    reports_as_leaf = True  # gcnn.exactness names this module, not its escnn child

    def __init__(self, kind: str, **kwargs: Any) -> None:
        super().__init__()
        if kind not in ("relu", "maxpool", "avgpool"):
            raise ValueError(f"kind must be 'relu', 'maxpool' or 'avgpool', got {kind!r}")
        self.kind, self.kwargs = kind, kwargs
        self._by_channels: dict[int, enn.EquivariantModule] = {}

    def _module(self, channels: int) -> enn.EquivariantModule:
        if channels not in self._by_channels:
            t = field_type(channels, "regular")
            if self.kind == "relu":
                module = enn.ReLU(t, **self.kwargs)
            elif self.kind == "maxpool":
                module = enn.PointwiseMaxPool2D(t, **self.kwargs)
            else:
                module = enn.PointwiseAdaptiveAvgPool2D(t, **self.kwargs)
            self._by_channels[channels] = module
        return self._by_channels[channels]

    def forward(self, x: Tensor) -> Tensor:
        module = self._module(x.shape[1])
        return module(enn.GeometricTensor(x, module.in_type)).tensor

    def export(self) -> nn.Module:
        """The torch module: ``nn.ReLU``, ``nn.MaxPool2d`` or ``nn.AdaptiveAvgPool2d``."""
        if self.kind == "relu":
            return nn.ReLU(**self.kwargs)
        if self.kind == "maxpool":
            return nn.MaxPool2d(**self.kwargs)
        return nn.AdaptiveAvgPool2d(**self.kwargs)

    def to_flip(self) -> nn.Module:
        """Hand-written flip models use the plain pointwise module: same as :meth:`export`."""
        return self.export()

    @classmethod
    def from_module(cls, module: nn.Module) -> EscnnPointwise:
        """From ``nn.ReLU``, ``nn.MaxPool2d`` or ``nn.AdaptiveAvgPool2d``."""
        if isinstance(module, nn.ReLU):
            return cls("relu", inplace=module.inplace)
        if isinstance(module, nn.MaxPool2d):
            if module.return_indices:
                raise ValueError("max-pool with return_indices is not supported")
            return cls(
                "maxpool",
                kernel_size=module.kernel_size,
                stride=module.stride,
                padding=module.padding,
                dilation=module.dilation,
                ceil_mode=module.ceil_mode,
            )
        if isinstance(module, nn.AdaptiveAvgPool2d):
            return cls("avgpool", output_size=module.output_size)
        raise TypeError(f"no escnn pointwise module for {type(module).__name__}")

    def extra_repr(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.kwargs.items())
        return f"{self.kind}" + (f", {args}" if args else "")
