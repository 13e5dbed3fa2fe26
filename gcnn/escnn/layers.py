r"""escnn layers on ``flip2dOnR2`` fields that take and return plain tensors.

Each layer wraps one escnn module (``R2Conv``, ``InnerBatchNorm``, ``ReLU``,
``PointwiseMaxPool2D``, ``PointwiseAdaptiveAvgPool2D``) so that it is a drop-in for the
hand-written layer of :mod:`gcnn.nn` inside an unchanged torchvision / gcnn container:
``forward`` wraps the ``(B, C, H, W)`` tensor in a ``GeometricTensor`` of the layer's field type
and unwraps the result. Field types are any :class:`~gcnn.nn.Fields` layout, as escnn's direct
sum of trivial then regular representations (:func:`~gcnn.escnn.basis.escnn_type`), so the
channels are the hand-written layers'. Every layer is a :class:`~gcnn.nn.FlipModule`: it
converts ``to_flip()`` to the hand-written layer and derives ``export()`` from it (one export
body per layer kind, in :mod:`gcnn.nn`), and is built ``from_flip()`` one, all with identical
outputs. Convs use the complete kernel basis of :mod:`gcnn.escnn.basis`.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from escnn import nn as enn
from torch import Tensor, nn

from gcnn.escnn.basis import (
    FullBasisR2Conv,
    escnn_type,
    field_type,
    flip_gspace,
    free_dimension,
    full_basis_r2conv,
    independent_basis,
    set_conv_filter,
    set_conv_free_weight,
)
from gcnn.escnn.sharing import SharesEscnnConstants, deepcopy_sharing
from gcnn.nn import Fields, FieldSpec, FlipBatchNorm2d, FlipConv2d, FlipModule, InvariantLinear
from gcnn.nn.expansion import FreeWeights
from gcnn.nn.fields import check_field_spec

__all__ = [
    "EscnnBatchNorm2d",
    "EscnnConv2d",
    "EscnnInvariantLinear",
    "EscnnPointwise",
    "FullBasisR2Conv",
    "escnn_type",
    "field_type",
    "flip_gspace",
    "free_dimension",
    "full_basis_r2conv",
    "independent_basis",
    "set_conv_filter",
    "set_conv_free_weight",
]


def _as_int(value: int | tuple[int, ...] | str, name: str) -> int:
    """A symmetric (h == w) hyper-parameter as one int; escnn's R2Conv is square."""
    if isinstance(value, str):
        raise ValueError(f"the escnn backend needs integer {name}, got {value!r}")
    if isinstance(value, int):
        return value
    if len(set(value)) != 1:
        raise ValueError(f"the escnn backend needs a square {name}, got {value}")
    return int(value[0])


class EscnnConv2d(SharesEscnnConstants, FlipModule):
    r"""Flip-equivariant conv built on escnn's ``R2Conv``: a drop-in for :class:`FlipConv2d`.

    Input ``(B, in_channels, H, W)`` of layout ``in_type``, output ``(B, out_channels, H', W')``
    of layout ``out_type``, as :class:`torch.nn.Conv2d`. ``in_type`` / ``out_type``: a
    :class:`~gcnn.nn.Fields` layout or the shorthand ``"trivial"`` / ``"regular"``; every
    combination works (trivial→trivial: mirror-symmetric kernels). The escnn field types are
    direct sums of trivial, then regular representations (:func:`escnn_type`). The filter is
    ``W = Σ_b c_b B_b`` over the complete equivariant basis of each (input kind, output kind)
    block (:func:`full_basis_r2conv`), so it satisfies ``W[σ_out(o)] = F σ_in·W[o]`` (``F``
    mirrors the kernel width, ``σ`` are the flip's channel permutations) and ranges over
    exactly the filters of the hand-written :class:`FlipConv2d`, with as many coefficients as
    its free parameters. ``groups`` must be 1 and kernel, stride, padding and dilation square.
    """

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
        in_type: FieldSpec = "regular",
        out_type: FieldSpec = "regular",
    ) -> None:
        super().__init__()
        self.in_type = check_field_spec(in_type, "in_type")
        self.out_type = check_field_spec(out_type, "out_type")
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

    def free_parameter_count(self) -> int:
        """Basis coefficients of the filter: the dimension of the equivariant filters, equal to
        :meth:`FlipConv2d.free_parameter_count` for the same layouts and kernel."""
        return self.conv.basisexpansion.dimension()

    def full_weight(self) -> Tensor:
        """The expanded filter, shape ``(out_channels, in_channels, k, k)`` (differentiable)."""
        return self.conv.expand_parameters()[0]

    def full_bias(self) -> Tensor | None:
        """The expanded bias, shape ``(out_channels,)`` (shared inside pairs), or ``None``."""
        return self.conv.expand_parameters()[1]

    def export(self) -> nn.Conv2d:
        """A plain :class:`torch.nn.Conv2d` with the expanded filter: identical outputs
        (:meth:`to_flip`, exported). Unlike escnn's ``R2Conv.export()``, this does not switch
        ``self`` to eval mode; the result has ``self``'s mode."""
        return self.to_flip().export()

    @torch.no_grad()
    def to_flip(self) -> FlipConv2d:
        """The hand-written :class:`FlipConv2d` with this filter: the free weights read off the
        expanded filter (:meth:`FlipConv2d.set_full_weight`)."""
        weight, bias = self.conv.expand_parameters()
        flip = FlipConv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            bias=bias is not None,
            padding_mode=self.padding_mode,
            in_type=self.in_type,
            out_type=self.out_type,
            device=weight.device,
            dtype=weight.dtype,
        )
        flip.set_full_weight(weight, bias)
        return flip.train(self.training)

    @classmethod
    @torch.no_grad()
    def from_flip(cls, flip: FlipConv2d, check: bool = True) -> EscnnConv2d:
        """The escnn conv with ``flip``'s filter and layouts: exact (residual at float32
        round-off, stored in ``projection_error`` when ``check``)."""
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
            out.conv, flip.free_weights(), flip.full_bias(), check=check
        )
        return out.train(flip.training)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, {self.in_type}→{self.out_type}"
        )


@functools.cache
def _inner_batchnorm_prototype(
    fields: Fields, eps: float, momentum: float | None, affine: bool, track_running_stats: bool
) -> enn.InnerBatchNorm:
    """A freshly initialised InnerBatchNorm to deep-copy (escnn's constructor is slow: it sorts
    the fields by size in Python). Never handed out itself."""
    return enn.InnerBatchNorm(
        escnn_type(fields),
        eps=eps,
        momentum=momentum,
        affine=affine,
        track_running_stats=track_running_stats,
    )


#: The per-field tensors of a BatchNorm: shape ``(t + r,)`` in gcnn, ``(t,)`` and ``(r,)`` in
#: escnn's two BatchNorm3d.
_BN_STATE = ("weight", "bias", "running_mean", "running_var")


class EscnnBatchNorm2d(SharesEscnnConstants, FlipModule):
    r"""escnn's ``InnerBatchNorm`` on any field layout: a drop-in for :class:`FlipBatchNorm2d`.

    Input and output ``(B, C, H, W)``, ``C = t + 2r`` for ``fields = Fields(t, r)`` (default
    ``"regular"``). ``InnerBatchNorm`` groups the fields by size and normalises each group with
    one ``BatchNorm3d`` on the view ``(B, n, size, H, W)``: a trivial channel on its own
    (statistics over batch and space, as :class:`torch.nn.BatchNorm2d`), pair ``k`` with one
    mean and variance over batch, space *and* both channels ``t + 2k, t + 2k + 1``, with one
    weight and bias per field: what :class:`FlipBatchNorm2d` computes, in train and eval mode.
    """

    def __init__(
        self,
        num_channels: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        fields: FieldSpec = "regular",
    ) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.fields = Fields.of(check_field_spec(fields, "fields"), num_channels)
        self.bn = deepcopy_sharing(
            _inner_batchnorm_prototype(self.fields, eps, momentum, affine, track_running_stats)
        )

    @property
    def in_fields(self) -> Fields:
        return self.fields

    @property
    def out_fields(self) -> Fields:
        return self.fields

    def parts(self) -> list[tuple[int, slice, nn.modules.batchnorm._BatchNorm]]:
        """``(field size, part, BatchNorm3d)`` per field size present, trivial fields first.

        ``part`` (``[:t]`` for the trivial fields, ``[t:]`` for the pairs) indexes both the
        ``C`` channels and gcnn's per-field tensors of shape ``(t + r,)``."""
        t = self.fields.trivial
        parts = [(1, slice(0, t)), (2, slice(t, None))]
        modules = self.bn._modules
        return [
            (s, p, modules[f"batch_norm_[{s}]"]) for s, p in parts if f"batch_norm_[{s}]" in modules
        ]

    def forward(self, x: Tensor) -> Tensor:
        # InnerBatchNorm's forward normalises the views (B, n, size, H, W) with its
        # BatchNorm3d and copies the results into a new tensor; here the BatchNorm3d run on the
        # views directly (same modules, parameters and statistics; tested against
        # InnerBatchNorm.forward), and an all-regular input is not copied. A channels_last
        # input (gcnn train on CUDA) is made contiguous for the view.
        b, _, h, w = enn.GeometricTensor(x, self.bn.in_type).tensor.shape  # checks C
        x = x.contiguous()
        outs = [
            bn(x[:, part].reshape(b, -1, size, h, w)).view(b, -1, h, w)
            for size, part, bn in self.parts()
        ]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)

    def _settings(self) -> dict[str, Any]:
        _, _, inner = self.parts()[0]
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
        return self.to_flip().export()

    @torch.no_grad()
    def to_flip(self) -> FlipBatchNorm2d:
        """The hand-written :class:`FlipBatchNorm2d` with the same parameters and statistics."""
        flip = FlipBatchNorm2d(self.num_channels, **self._settings(), fields=self.fields)
        for _, part, inner in self.parts():
            _copy_bn_state(inner, flip, part, to_escnn=False)
        return flip.train(self.training)

    @classmethod
    @torch.no_grad()
    def from_flip(cls, flip: FlipBatchNorm2d) -> EscnnBatchNorm2d:
        """The escnn BatchNorm with ``flip``'s layout, parameters and statistics: identical
        outputs."""
        out = cls(
            flip.num_channels,
            flip.eps,
            flip.momentum,
            flip.affine,
            flip.track_running_stats,
            fields=flip.fields,
        )
        ref = flip.weight if flip.affine else flip.running_mean
        if ref is not None:
            out = out.to(ref)
        for _, part, inner in out.parts():
            _copy_bn_state(inner, flip, part, to_escnn=True)
        return out.train(flip.training)

    def extra_repr(self) -> str:
        return f"{self.num_channels} ({self.fields})"


def _copy_bn_state(
    inner: nn.modules.batchnorm._BatchNorm, flip: FlipBatchNorm2d, part: slice, to_escnn: bool
) -> None:
    """Copy parameters, statistics and the batch counter between one of escnn's BatchNorm3d
    and the fields ``part`` of a :class:`FlipBatchNorm2d`, in either direction."""
    for name in _BN_STATE:
        mine, theirs = getattr(inner, name), getattr(flip, name)
        if mine is not None:
            mine.copy_(theirs[part]) if to_escnn else theirs[part].copy_(mine)
    if inner.num_batches_tracked is not None:
        src, dst = (flip, inner) if to_escnn else (inner, flip)
        dst.num_batches_tracked.copy_(src.num_batches_tracked)


class EscnnInvariantLinear(SharesEscnnConstants, FlipModule):
    r"""Invariant head: an escnn 1×1 ``R2Conv`` from any layout to trivial fields on a 1×1 map.

    Input ``(B, in_features)`` of layout ``in_type`` (default ``"regular"``: pairs
    interleaved), output ``(B, out_features)``. The equivariant 1×1 kernels to trivial fields
    are ``W = [s | u ⊗ (1, 1)]``: any columns ``s`` on the trivial inputs and equal columns
    ``W[:, t + 2k] = W[:, t + 2k + 1]`` on each pair (mean pair pooling and a linear map), the
    function class of :class:`gcnn.nn.InvariantLinear`. (escnn's ``GroupPooling`` takes the
    *max* over each pair; a max cannot be exported to the plain ``Linear`` head of VGG /
    ResNet, so the head uses this invariant map instead.)
    """

    projection_error: float = 0.0  # residual of the last from_flip change of basis

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, in_type: FieldSpec = "regular"
    ) -> None:
        super().__init__()
        self.in_type = check_field_spec(in_type, "in_type")
        self.in_features, self.out_features = in_features, out_features
        self.conv = full_basis_r2conv(
            field_type(in_features, in_type), field_type(out_features, "trivial"), 1, bias=bias
        )

    @property
    def in_fields(self) -> Fields:
        return Fields.of(self.in_type, self.in_features)

    @property
    def out_fields(self) -> Fields:
        return Fields(trivial=self.out_features)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(enn.GeometricTensor(x[:, :, None, None], self.conv.in_type))
        return y.tensor.flatten(1)

    def full_weight(self) -> Tensor:
        """The weight of shape ``(out_features, in_features)`` (differentiable)."""
        return self.conv.expand_parameters()[0][:, :, 0, 0]

    def export(self) -> nn.Linear:
        """A plain :class:`torch.nn.Linear`: identical outputs (:meth:`to_flip`, exported)."""
        return self.to_flip().export()

    @torch.no_grad()
    def to_flip(self) -> InvariantLinear:
        """The hand-written :class:`InvariantLinear` with this weight
        (:meth:`InvariantLinear.from_linear`: exact for an invariant weight)."""
        weight, bias = self.conv.expand_parameters()
        linear = nn.Linear(
            self.in_features,
            self.out_features,
            bias=bias is not None,
            device=weight.device,
            dtype=weight.dtype,
        )
        linear.weight.copy_(weight[:, :, 0, 0])
        if bias is not None:
            linear.bias.copy_(bias)
        return InvariantLinear.from_linear(linear, in_type=self.in_type).train(self.training)

    @classmethod
    @torch.no_grad()
    def from_flip(cls, inv: InvariantLinear, check: bool = True) -> EscnnInvariantLinear:
        """The escnn head with ``inv``'s layout and weights: exact (``projection_error`` when
        ``check``)."""
        out = cls(
            inv.in_features, inv.out_features, bias=inv.bias is not None, in_type=inv.in_type
        ).to(inv.full_weight())
        out.projection_error = set_conv_free_weight(
            out.conv, _invariant_free_weights(inv), inv.bias, check=check
        )
        return out.train(inv.training)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"{self.in_type}→trivial"
        )


def _invariant_free_weights(inv: InvariantLinear) -> FreeWeights:
    """The free weights of ``inv`` as a 1×1 conv to trivial fields: ``symmetric`` = the
    trivial columns ``s`` and ``invariant`` = the pair columns ``u``, each ``(out, ·, 1, 1)``."""
    weight = inv.full_weight()[:, :, None, None]
    t = inv.in_fields.trivial
    return FreeWeights(
        invariant=weight[:, t::2] if inv.in_fields.regular else None,
        symmetric=weight[:, :t] if t else None,
    )


class EscnnPointwise(SharesEscnnConstants, FlipModule):
    r"""A pointwise escnn module (``ReLU``, ``PointwiseMaxPool2D``, ``PointwiseAdaptiveAvgPool2D``)
    that accepts a field of any width and layout.

    torchvision reuses one ``relu`` on feature maps of different widths, while an escnn module is
    typed by its input field; the escnn module for ``C`` channels is built on first use (they
    hold no parameters or buffers). A pointwise op computes the same on every layout of ``C``
    channels (it commutes with every channel permutation), and the layout of a plain tensor is
    not known here: the escnn type is nominal, ``C // 2`` regular fields (after one trivial
    field when ``C`` is odd). Shapes as the torch module ``kind`` names.
    """

    def __init__(self, kind: str, **kwargs: Any) -> None:
        super().__init__()
        if kind not in ("relu", "maxpool", "avgpool"):
            raise ValueError(f"kind must be 'relu', 'maxpool' or 'avgpool', got {kind!r}")
        self.kind, self.kwargs = kind, kwargs
        self._by_channels: dict[int, enn.EquivariantModule] = {}

    def _module(self, channels: int) -> enn.EquivariantModule:
        if channels not in self._by_channels:
            t = escnn_type(Fields(trivial=channels % 2, regular=channels // 2))
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
