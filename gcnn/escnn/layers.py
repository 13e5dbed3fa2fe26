r"""escnn layers on ``flip2dOnR2`` fields that take and return plain tensors.

Each layer wraps one escnn module (``R2Conv``, ``InnerBatchNorm``, ``ReLU``,
``PointwiseMaxPool2D``, ``PointwiseAdaptiveAvgPool2D``) so that it is a drop-in for the
hand-written layer of :mod:`gcnn.nn` inside an unchanged torchvision / gcnn container:
``forward`` wraps the ``(B, C, H, W)`` tensor in a ``GeometricTensor`` of the layer's field type
and unwraps the result. Every layer is a :class:`~gcnn.nn.FlipModule`: it converts
``to_flip()`` to the hand-written layer and derives ``export()`` from it (one export body per
layer kind, in :mod:`gcnn.nn`), and is built ``from_flip()`` one, all with identical outputs.
Convs use the complete kernel basis of :mod:`gcnn.escnn.basis`.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from escnn import nn as enn
from torch import Tensor, nn

from gcnn.escnn.basis import (
    FullBasisR2Conv,
    field_type,
    flip_gspace,
    free_dimension,
    full_basis_r2conv,
    independent_basis,
    set_conv_filter,
    set_conv_free_weight,
)
from gcnn.escnn.sharing import SharesEscnnConstants, deepcopy_sharing
from gcnn.nn import Fields, FlipBatchNorm2d, FlipConv2d, FlipModule, InvariantLinear
from gcnn.nn.fields import FieldType as FieldName
from gcnn.nn.fields import check_field_type

__all__ = [
    "EscnnBatchNorm2d",
    "EscnnConv2d",
    "EscnnInvariantLinear",
    "EscnnPointwise",
    "FullBasisR2Conv",
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


def _shorthand(fields: Fields) -> FieldName:
    """``"trivial"`` / ``"regular"`` for a pure layout (the escnn layers' field types)."""
    if fields.is_trivial:
        return "trivial"
    if fields.is_regular:
        return "regular"
    raise NotImplementedError(f"the escnn layers take pure layouts, got {fields}")


class EscnnConv2d(SharesEscnnConstants, FlipModule):
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
            in_type=_shorthand(flip.in_fields),
            out_type=_shorthand(flip.out_fields),
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


class EscnnBatchNorm2d(SharesEscnnConstants, FlipModule):
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
        self.bn = deepcopy_sharing(
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
        return self.to_flip().export()

    @torch.no_grad()
    def to_flip(self) -> FlipBatchNorm2d:
        """The hand-written :class:`FlipBatchNorm2d` with the same parameters and statistics."""
        bn = FlipBatchNorm2d(self.num_channels, **self._settings())
        inner = self.inner
        if inner.affine:
            bn.weight.copy_(inner.weight)
            bn.bias.copy_(inner.bias)
        if inner.track_running_stats:
            bn.running_mean.copy_(inner.running_mean)
            bn.running_var.copy_(inner.running_var)
            bn.num_batches_tracked.copy_(inner.num_batches_tracked)
        return bn.train(self.training)

    @classmethod
    @torch.no_grad()
    def from_flip(cls, flip: FlipBatchNorm2d) -> EscnnBatchNorm2d:
        """The escnn BatchNorm with ``flip``'s parameters and statistics: identical outputs."""
        if _shorthand(flip.fields) != "regular":
            raise NotImplementedError("the escnn BatchNorm takes a regular field")
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


class EscnnInvariantLinear(SharesEscnnConstants, FlipModule):
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

    def export(self) -> nn.Linear:
        """A plain :class:`torch.nn.Linear`: identical outputs (:meth:`to_flip`, exported)."""
        return self.to_flip().export()

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
        if _shorthand(inv.in_fields) != "regular":
            raise NotImplementedError("the escnn head takes a regular input")
        out = cls(inv.in_features, inv.out_features, bias=inv.bias is not None).to(inv.weight)
        free = inv.weight[:, :, None, None]  # W[:, 2j] = W[:, 2j+1] = u[:, j]
        out.projection_error = set_conv_free_weight(out.conv, free, inv.bias, check=check)
        return out.train(inv.training)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, regular→trivial"


class EscnnPointwise(SharesEscnnConstants, FlipModule):
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
