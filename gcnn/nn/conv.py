"""Reflection-symmetric (flip-equivariant) 2-D convolution."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from gcnn.nn.fields import FieldType, check_field_type


class FlipConv2d(nn.Module):
    r"""A conv that commutes with the horizontal flip: ``conv(g·x) = g·conv(x)``.

    Shapes: input ``(B, in_channels, H, W)``, output ``(B, out_channels, H', W')`` exactly as
    :class:`torch.nn.Conv2d` with the same arguments. Equivariance is exact when every strided
    op sees a width with ``(W + 2p - d(k-1) - 1) % s == 0`` (see :mod:`gcnn.exactness`).

    Weight constraint (``F`` mirrors the kernel width, ``S`` swaps input pairs, ``S = id`` on a
    trivial input; the stored free weight is ``self.weight``):

    * ``regular`` output: ``self.weight`` is ``w`` of shape ``(out/2, in/groups, kh, kw)`` and
      the full weight interleaves ``W[2k] = w[k]`` with its mirror ``W[2k+1] = F S w[k]``.
      Bias ``b`` of shape ``(out/2,)`` is shared inside each pair.
    * ``trivial`` output (invariant, needs a regular input): ``self.weight`` is ``u`` of shape
      ``(out, in/groups/2, kh, kw)`` and ``W[:, 2j] = u[:, j]``, ``W[:, 2j+1] = F u[:, j]``, so
      ``W = F S W``. Bias of shape ``(out,)``.

    Groups: pairs must not straddle groups, so ``out/groups`` must be even for a regular output
    and ``in/groups`` even for a regular input — except the depthwise case
    ``groups == in == out`` with regular fields, where pair partners sit in neighbouring groups
    and the mirror is ``W[2k+1] = F W[2k]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        in_type: FieldType = "regular",
        out_type: FieldType = "regular",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_type = check_field_type(in_type, "in_type")
        self.out_type = check_field_type(out_type, "out_type")
        if in_type == "trivial" and out_type == "trivial":
            raise ValueError(
                "trivial→trivial flip convs (mirror-symmetric kernels) are not supported; "
                "use in_type='trivial', out_type='regular' and pool the pairs"
            )
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must be "
                f"divisible by groups ({groups})"
            )
        if in_type == "regular" and in_channels % 2:
            raise ValueError(f"a regular input needs an even in_channels, got {in_channels}")
        if out_type == "regular" and out_channels % 2:
            raise ValueError(f"a regular output needs an even out_channels, got {out_channels}")
        if isinstance(padding, str) and padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid', 'same' or ints, got {padding!r}")
        if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
            raise ValueError(f"unknown padding_mode {padding_mode!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.padding_mode = padding_mode
        self._depthwise_pairs = self._pair_layout_in_groups()

        in_g = in_channels // groups
        kh, kw = self.kernel_size
        factory = {"device": device, "dtype": dtype}
        if out_type == "regular":
            shape = (out_channels // 2, in_g, kh, kw)
            bias_shape = (out_channels // 2,)
        else:
            shape = (out_channels, in_g // 2, kh, kw)
            bias_shape = (out_channels,)
        self.weight = nn.Parameter(torch.empty(shape, **factory))
        self.bias = nn.Parameter(torch.empty(bias_shape, **factory)) if bias else None
        self.reset_parameters()

    def _pair_layout_in_groups(self) -> bool:
        """Validate that pairs fit the groups; True for the depthwise-pairs special case."""
        if self.groups == 1:
            return False
        in_g = self.in_channels // self.groups
        out_g = self.out_channels // self.groups
        depthwise = in_g == 1 and out_g == 1
        if self.in_type == "regular" and self.out_type == "regular" and depthwise:
            return True
        if self.out_type == "regular" and out_g % 2:
            raise ValueError(
                f"groups={self.groups} splits output pairs: out_channels/groups = {out_g} "
                "must be even (or use groups == in_channels == out_channels)"
            )
        if self.in_type == "regular" and in_g % 2:
            raise ValueError(
                f"groups={self.groups} splits input pairs: in_channels/groups = {in_g} "
                "must be even (or use groups == in_channels == out_channels)"
            )
        return False

    def reset_parameters(self) -> None:
        """He-normal init of the full filter, fan-in ``in/groups · kh · kw``."""
        kh, kw = self.kernel_size
        fan_in = (self.in_channels // self.groups) * kh * kw
        nn.init.normal_(self.weight, 0.0, math.sqrt(2.0 / fan_in))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def full_weight(self) -> Tensor:
        """The constrained weight of shape ``(out_channels, in_channels/groups, kh, kw)``."""
        w = self.weight
        if self.out_type == "trivial":  # u -> interleave (u, F u) along the input dim
            return torch.stack((w, w.flip(-1)), dim=2).flatten(1, 2)
        if self.in_type == "regular" and not self._depthwise_pairs:
            mirror = w.unflatten(1, (-1, 2)).flip(2, -1).flatten(1, 2)  # F S w
        else:
            mirror = w.flip(-1)  # F w
        return torch.stack((w, mirror), dim=1).flatten(0, 1)

    def full_bias(self) -> Tensor | None:
        """The bias of shape ``(out_channels,)``, repeated inside pairs for a regular output."""
        if self.bias is None or self.out_type == "trivial":
            return self.bias
        return self.bias.repeat_interleave(2)

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self.full_weight(), self.full_bias()
        if self.padding_mode != "zeros":
            if isinstance(self.padding, str):
                raise ValueError("string padding needs padding_mode='zeros'")
            ph, pw = self.padding
            x = F.pad(x, (pw, pw, ph, ph), mode=self.padding_mode)
            padding: tuple[int, int] | str = (0, 0)
        else:
            padding = self.padding
        return F.conv2d(x, weight, bias, self.stride, padding, self.dilation, self.groups)

    @torch.no_grad()
    def export(self) -> nn.Conv2d:
        """A plain :class:`torch.nn.Conv2d` with the full weight: identical outputs."""
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            bias=self.bias is not None,
            padding_mode=self.padding_mode,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        conv.weight.copy_(self.full_weight())
        if self.bias is not None:
            conv.bias.copy_(self.full_bias())
        return conv.train(self.training)

    @classmethod
    @torch.no_grad()
    def from_conv(
        cls, conv: nn.Conv2d, in_type: FieldType = "regular", out_type: FieldType = "regular"
    ) -> FlipConv2d:
        """A flip conv with ``conv``'s hyper-parameters, initialised from its weights.

        The free weight takes ``conv``'s even output filters (regular output) or its even input
        columns (trivial output), so the filter scale of ``conv``'s init is kept.
        """
        flip = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            in_type=in_type,
            out_type=out_type,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        if out_type == "regular":
            flip.weight.copy_(conv.weight[0::2])
            if conv.bias is not None:
                flip.bias.copy_(conv.bias[0::2])
        else:
            flip.weight.copy_(conv.weight[:, 0::2])
            if conv.bias is not None:
                flip.bias.copy_(conv.bias)
        return flip.train(conv.training)

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}"
        )
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s + f", {self.in_type}→{self.out_type}"
