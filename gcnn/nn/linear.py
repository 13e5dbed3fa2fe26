r"""An equivariant Linear on a flattened ``C×H×W`` field (a "spatial" Linear), any layouts.

A Linear reading ``x.flatten(1)`` of a ``(B, C, H, W)`` field is the conv with kernel
``(H, W)`` and no padding applied to that map (output ``1×1``), and the flip acts on the input
exactly as on a conv's: mirror ``W`` and permute the channels. So its constraint is a conv's
with a full-size kernel, and :func:`gcnn.nn.expansion.expand_conv_weight` gives its complete
parametrisation: ``W[o, c, h, w]`` with ``W[σ_out(o)] = F σ_in·W[o]`` (input columns mirrored
along the width and pairs swapped). ``spatial = (1, 1)`` is a plain vector Linear between two
layouts (regular → regular: one free row per output pair, the second row the pair-swapped
first).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from gcnn.nn.expansion import (
    ConvFields,
    FreeWeights,
    expand_bias,
    expand_conv_weight,
    free_bias,
    free_from_full,
)
from gcnn.nn.fields import Fields, FieldSpec, check_field_spec
from gcnn.nn.module import FlipModule

_BLOCK_NAMES = {"pairs": "weight", "invariant": "trivial_weight", "symmetric": "symmetric_weight"}


class FlipLinear(FlipModule):
    r"""A Linear that commutes with the flip, on a flattened ``(C, H, W)`` input field.

    Input ``(B, C·H·W)`` (``x.flatten(1)`` of a field of layout ``in_type`` with ``C``
    channels), output ``(B, out_features)`` of layout ``out_type`` (a vector: the flip only
    permutes its channels). ``in_type`` / ``out_type``: :class:`~gcnn.nn.Fields` or
    ``"trivial"`` / ``"regular"``. The full weight ``(out, C·H·W)`` is the conv weight
    ``(out, C, H, W)`` of :mod:`gcnn.nn.expansion` flattened, so the free parameters are
    complete and named as :class:`~gcnn.nn.FlipConv2d`'s (``weight`` first, then
    ``trivial_weight``, ``symmetric_weight``); the bias has one entry per output field.
    Exports to :class:`torch.nn.Linear`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        in_type: FieldSpec = "regular",
        out_type: FieldSpec = "regular",
        spatial: tuple[int, int] = (1, 1),
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_field_spec(in_type, "in_type")
        check_field_spec(out_type, "out_type")
        h, w = spatial
        if h < 1 or w < 1 or in_features % (h * w):
            raise ValueError(f"in_features={in_features} is not C·H·W for spatial={spatial}")
        self._in_fields = Fields.of(in_type, in_features // (h * w))
        self._out_fields = Fields.of(out_type, out_features)
        self.in_type, self.out_type = in_type, out_type
        self.in_features, self.out_features = in_features, out_features
        self.spatial = (h, w)
        self.fields = ConvFields(self._out_fields, self._in_fields)
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self._block_params: dict[str, str] = {}
        for i, (block, shape) in enumerate(self.fields.shapes(self.spatial).items()):
            name = "weight" if i == 0 else _BLOCK_NAMES[block]
            self._block_params[block] = name
            self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory)))
        n_bias = self._out_fields.trivial + self._out_fields.regular
        self.bias = nn.Parameter(torch.empty(n_bias, **factory)) if bias else None
        self.reset_parameters()

    @property
    def in_fields(self) -> Fields:
        """The layout of the input's ``C`` channels (before flattening)."""
        return self._in_fields

    @property
    def out_fields(self) -> Fields:
        return self._out_fields

    def reset_parameters(self) -> None:
        """:class:`torch.nn.Linear`'s init scale: uniform in ``±1/√in_features``."""
        bound = 1 / math.sqrt(self.in_features)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def free_weights(self) -> FreeWeights:
        return FreeWeights(**{b: getattr(self, n) for b, n in self._block_params.items()})

    def free_parameter_count(self) -> int:
        return self.fields.free_count(self.spatial)

    def full_weight(self) -> Tensor:
        """The constrained weight ``(out_features, in_features)``."""
        weight = expand_conv_weight(self.free_weights(), self.fields, self.spatial[1])
        return weight.flatten(1)

    def full_bias(self) -> Tensor | None:
        return None if self.bias is None else expand_bias(self.bias, self._out_fields)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.full_weight(), self.full_bias())

    @torch.no_grad()
    def export(self) -> nn.Linear:
        """A plain :class:`torch.nn.Linear` with the full weight: identical outputs."""
        weight = self.full_weight()
        linear = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=weight.device,
            dtype=weight.dtype,
        )
        linear.weight.copy_(weight)
        if self.bias is not None:
            linear.bias.copy_(self.full_bias())
        return linear.train(self.training)

    @torch.no_grad()
    def set_full_weight(self, weight: Tensor, bias: Tensor | None = None) -> None:
        """Free weights read off a full ``(out, C·H·W)`` weight (exact when equivariant)."""
        c = self._in_fields.channels
        free = free_from_full(weight.reshape(self.out_features, c, *self.spatial), self.fields)
        for block, name in self._block_params.items():
            getattr(self, name).copy_(getattr(free, block))
        if bias is not None and self.bias is not None:
            self.bias.copy_(free_bias(bias, self._out_fields))

    @classmethod
    @torch.no_grad()
    def from_linear(
        cls,
        linear: nn.Linear,
        in_type: FieldSpec = "regular",
        out_type: FieldSpec = "regular",
        spatial: tuple[int, int] = (1, 1),
    ) -> FlipLinear:
        """A flip Linear of ``linear``'s shape, its free weights read off ``linear``'s weight
        (the first row of each output pair etc.; exact for an equivariant ``linear``)."""
        flip = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            in_type=in_type,
            out_type=out_type,
            spatial=spatial,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )
        flip.set_full_weight(linear.weight, linear.bias)
        return flip.train(linear.training)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"spatial={self.spatial}, {self._in_fields}→{self._out_fields}"
        )
