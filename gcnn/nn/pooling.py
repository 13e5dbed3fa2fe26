"""Invariant pooling over channel pairs, and the invariant linear head."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from gcnn.nn.fields import Fields, FieldSpec, check_field_spec
from gcnn.nn.module import FlipModule


class PairPool(FlipModule):
    r"""Pool each channel pair into one invariant channel; trivial channels pass through.

    On a regular field ``(B, C, *spatial) → (B, C/2, *spatial)``,
    ``y[:, k] = reduce(x[:, 2k], x[:, 2k+1])`` with ``reduce`` the mean or the max. Swapping
    the pair leaves ``y`` unchanged, so a regular field becomes a trivial one
    (``pool(g·x) = flip(pool(x))``). With ``fields = Fields(t, r)`` the first ``t`` channels are
    copied: ``(B, t + 2r, …) → (B, t + r, …)``, all trivial. ``fields=None`` (default): every
    channel of the input is in a pair, whatever its width.
    """

    def __init__(self, mode: str = "mean", fields: Fields | None = None) -> None:
        super().__init__()
        if mode not in ("mean", "max"):
            raise ValueError(f"mode must be 'mean' or 'max', got {mode!r}")
        if fields is not None and not isinstance(fields, Fields):
            raise ValueError(f"fields must be a Fields or None, got {fields!r}")
        self.mode = mode
        self.fields = fields

    @property
    def in_fields(self) -> Fields | None:
        return self.fields

    @property
    def out_fields(self) -> Fields | None:
        f = self.fields
        return None if f is None else Fields(trivial=f.trivial + f.regular)

    def forward(self, x: Tensor) -> Tensor:
        t = 0 if self.fields is None else self.fields.trivial
        layout = Fields.of(self.fields or "regular", x.shape[1])
        pairs = x[:, t:].unflatten(1, (-1, 2)) if t else x.unflatten(1, (-1, 2))
        pooled = pairs.mean(2) if self.mode == "mean" else pairs.amax(2)
        return torch.cat((x[:, :t], pooled), dim=1) if layout.trivial else pooled

    def export(self) -> nn.Module:
        """Already plain torch: returns ``self``."""
        return self

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}" + ("" if self.fields is None else f", fields={self.fields}")


class InvariantLinear(FlipModule):
    r"""A linear map from a vector field to invariant outputs: ``f(P x) = f(x)``.

    Input ``(B, in_features)`` of layout ``in_type`` (default ``"regular"``: pairs
    interleaved), output ``(B, out_features)``, trivial. For ``in_type = Fields(t, r)`` the full
    weight is ``W = [s | u ⊗ (1, 1)]``: free columns ``s`` of shape ``(out, t)`` on the trivial
    inputs and one free column per pair, ``W[:, t + 2k] = W[:, t + 2k + 1] = u[:, k]`` (mean
    pair pooling followed by a linear layer of weight ``2u``). These are all the invariant
    linear maps. The first non-empty block (``u``, else ``s``) is the parameter ``weight``;
    ``s`` is ``symmetric_weight`` when both exist. Exports to a plain
    :class:`torch.nn.Linear` of shape ``(out, in)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        in_type: FieldSpec = "regular",
    ) -> None:
        super().__init__()
        check_field_spec(in_type, "in_type")
        if in_type == "regular" and in_features % 2:
            raise ValueError(f"a regular input needs an even in_features, got {in_features}")
        self._in_fields = Fields.of(in_type, in_features)
        self.in_type = in_type
        self.in_features = in_features
        self.out_features = out_features
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        t, r = self._in_fields.trivial, self._in_fields.regular
        self._pair_name = "weight" if r else None
        self._trivial_name = ("symmetric_weight" if r else "weight") if t else None
        if r:
            self.weight = nn.Parameter(torch.empty(out_features, r, **factory))
        if t:
            setattr(self, self._trivial_name, nn.Parameter(torch.empty(out_features, t, **factory)))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.reset_parameters()

    @property
    def in_fields(self) -> Fields:
        return self._in_fields

    @property
    def out_fields(self) -> Fields:
        return Fields(trivial=self.out_features)

    def reset_parameters(self) -> None:
        """torch.nn.Linear's init for the full ``(out, in)`` weight."""
        bound = self.in_features**-0.5
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def full_weight(self) -> Tensor:
        """The constrained weight of shape ``(out_features, in_features)``."""
        cols = []
        if self._trivial_name is not None:
            cols.append(getattr(self, self._trivial_name))
        if self._pair_name is not None:
            cols.append(self.weight.repeat_interleave(2, dim=1))
        return cols[0] if len(cols) == 1 else torch.cat(cols, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.full_weight(), self.bias)

    @torch.no_grad()
    def export(self) -> nn.Linear:
        """A plain :class:`torch.nn.Linear` with the full weight: identical outputs."""
        lin = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=self.full_weight().device,
            dtype=self.full_weight().dtype,
        )
        lin.weight.copy_(self.full_weight())
        if self.bias is not None:
            lin.bias.copy_(self.bias)
        return lin.train(self.training)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, in_type: FieldSpec = "regular") -> InvariantLinear:
        """An invariant linear with ``linear``'s shape; ``u`` = mean of each column pair, the
        trivial columns copied (exact for an invariant ``linear``)."""
        inv = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
            in_type=in_type,
        )
        t = inv.in_fields.trivial
        if inv._trivial_name is not None:
            getattr(inv, inv._trivial_name).copy_(linear.weight[:, :t])
        if inv._pair_name is not None:
            inv.weight.copy_(linear.weight[:, t:].unflatten(1, (-1, 2)).mean(2))
        if linear.bias is not None:
            inv.bias.copy_(linear.bias)
        return inv.train(linear.training)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"{self._in_fields}→trivial"
        )
