"""Hypothesis strategies for mixed field layouts (trivial channels + regular pairs)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st

from gcnn.nn import Fields, FlipConv2d


def layouts(max_trivial: int = 3, max_pairs: int = 3) -> st.SearchStrategy[Fields]:
    """Any non-empty layout: all-trivial, all-regular and mixed."""
    return (
        st.builds(Fields, st.integers(0, max_trivial), st.integers(0, max_pairs))
        .filter(lambda f: f.channels > 0)
    )  # fmt: skip


@dataclass(frozen=True)
class MixedConv:
    """A flip conv on arbitrary layouts, and an input width at which it is exact."""

    in_fields: Fields
    out_fields: Fields
    kernel: tuple[int, int]
    stride: int
    padding: tuple[int, int]
    dilation: int
    groups: int
    bias: bool
    height: int
    width: int

    def build(self, dtype: torch.dtype = torch.float64) -> FlipConv2d:
        conv = FlipConv2d(
            self.in_fields.channels, self.out_fields.channels, self.kernel, stride=self.stride,
            padding=self.padding, dilation=self.dilation, groups=self.groups, bias=self.bias,
            in_type=self.in_fields, out_type=self.out_fields, dtype=dtype,
        )  # fmt: skip
        if conv.bias is not None:
            torch.nn.init.normal_(conv.bias)  # zero biases would hide a bias-sharing bug
        return conv


@st.composite
def mixed_convs(draw: st.DrawFn, stride_one: bool = False) -> MixedConv:
    """Dense convs between any two layouts, grouped convs on pure layouts, depthwise convs on
    any layout; rectangular kernels of width 1–5; widths where the exactness rule holds."""
    kind = draw(st.sampled_from(["dense", "dense", "grouped", "depthwise"]))
    if kind == "dense":
        in_f, out_f, groups = draw(layouts()), draw(layouts()), 1
    elif kind == "depthwise":
        in_f = out_f = draw(layouts())
        groups = in_f.channels
    else:
        groups = 2
        in_f, out_f = (
            draw(st.sampled_from([Fields(trivial=2 * n), Fields(regular=2 * n)]))
            for n in (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
        )
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 5)))
    stride = 1 if stride_one else draw(st.integers(1, 2))
    dilation = draw(st.integers(1, 2))
    k_eff = dilation * (kernel[1] - 1) + 1
    k_eff_h = dilation * (kernel[0] - 1) + 1
    # padding up to half the kernel: every window covers a real pixel (a window entirely in
    # the padding makes the output trivially symmetric)
    padding = (draw(st.integers(0, k_eff_h // 2)), draw(st.integers(0, k_eff // 2)))
    low = k_eff  # at least the dilated kernel's width: every window reads a real pixel
    width = next(w for w in range(low, low + stride) if (w + 2 * padding[1] - k_eff) % stride == 0)
    width += stride * draw(st.integers(0, 3))
    height = dilation * (kernel[0] - 1) + 1 + draw(st.integers(0, 2))
    return MixedConv(
        in_f, out_f, kernel, stride, padding, dilation, groups, draw(st.booleans()), height, width
    )
