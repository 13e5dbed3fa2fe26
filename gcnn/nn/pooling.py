"""Invariant pooling over channel pairs, and the invariant linear head."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PairPool(nn.Module):
    r"""Pool each channel pair of a regular field into one invariant channel.

    ``(B, C, *spatial) → (B, C/2, *spatial)``; ``y[:, k] = reduce(x[:, 2k], x[:, 2k+1])`` with
    ``reduce`` the mean or the max. Swapping the pair leaves ``y`` unchanged, so a regular
    field becomes a trivial one (``pool(g·x) = flip(pool(x))``).
    """

    def __init__(self, mode: str = "mean") -> None:
        super().__init__()
        if mode not in ("mean", "max"):
            raise ValueError(f"mode must be 'mean' or 'max', got {mode!r}")
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] % 2:
            raise ValueError(f"a regular field needs an even number of channels, got {x.shape[1]}")
        pairs = x.unflatten(1, (-1, 2))
        return pairs.mean(2) if self.mode == "mean" else pairs.amax(2)

    def export(self) -> nn.Module:
        """Already plain torch: returns ``self``."""
        return self

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class InvariantLinear(nn.Module):
    r"""A linear map from a regular vector to invariant outputs: ``f(S x) = f(x)``.

    Input ``(B, in_features)`` (pairs interleaved), output ``(B, out_features)``. The free weight
    ``u`` has shape ``(out, in/2)`` and the full weight ``W[:, 2k] = W[:, 2k+1] = u[:, k]``,
    i.e. mean pair pooling followed by a linear layer of weight ``2u``. Exports to a plain
    :class:`torch.nn.Linear` of shape ``(out, in)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if in_features % 2:
            raise ValueError(f"a regular input needs an even in_features, got {in_features}")
        self.in_features = in_features
        self.out_features = out_features
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features // 2, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch.nn.Linear's init for the full ``(out, in)`` weight."""
        bound = self.in_features**-0.5
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def full_weight(self) -> Tensor:
        """The constrained weight of shape ``(out_features, in_features)``."""
        return self.weight.repeat_interleave(2, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.full_weight(), self.bias)

    @torch.no_grad()
    def export(self) -> nn.Linear:
        """A plain :class:`torch.nn.Linear` with the full weight: identical outputs."""
        lin = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        lin.weight.copy_(self.full_weight())
        if self.bias is not None:
            lin.bias.copy_(self.bias)
        return lin.train(self.training)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear) -> InvariantLinear:
        """An invariant linear with ``linear``'s shape; ``u`` = mean of each column pair."""
        inv = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )
        inv.weight.copy_(linear.weight.unflatten(1, (-1, 2)).mean(2))
        if linear.bias is not None:
            inv.bias.copy_(linear.bias)
        return inv.train(linear.training)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, regular→trivial"
