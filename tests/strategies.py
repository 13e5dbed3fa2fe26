"""Hypothesis strategies shared by the equivariance tests."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st


@dataclass(frozen=True)
class ConvCase:
    """One flip-conv configuration and an input width for it."""

    in_type: str
    out_type: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    padding: int
    dilation: int
    groups: int
    bias: bool
    padding_mode: str
    batch: int
    height: int
    width: int
    dtype: torch.dtype

    @property
    def effective_kernel(self) -> int:
        return self.dilation * (self.kernel - 1) + 1

    @property
    def rule_holds(self) -> bool:
        return (self.width + 2 * self.padding - self.effective_kernel) % self.stride == 0


@st.composite
def conv_cases(
    draw: st.DrawFn, exact: bool | None = True, any_padding_mode: bool = True
) -> ConvCase:
    """Flip-conv configurations; ``exact`` picks widths where the rule holds (True), fails
    (False, needs stride > 1) or either (None).

    Reflect/replicate/circular padding can make a rule-breaking strided conv symmetric by
    coincidence at the border (the rule is sufficient, and necessary only with zero padding):
    ``any_padding_mode=False`` draws zero padding only."""
    in_type, out_type = draw(
        st.sampled_from([("trivial", "regular"), ("regular", "regular"), ("regular", "trivial")])
    )
    layout = draw(st.sampled_from(["dense", "grouped", "depthwise"]))
    if in_type == "trivial" or out_type == "trivial":
        layout = draw(st.sampled_from(["dense", "grouped"]))
    groups = {"dense": 1, "grouped": 2, "depthwise": 0}[layout]
    if layout == "depthwise":
        channels = 2 * draw(st.integers(1, 3))
        in_channels = out_channels = groups = channels
    else:
        in_per_group = (
            2 * draw(st.integers(1, 2)) if in_type == "regular" else draw(st.integers(1, 3))
        )
        out_per_group = (
            2 * draw(st.integers(1, 2)) if out_type == "regular" else draw(st.integers(1, 3))
        )
        in_channels, out_channels = in_per_group * groups, out_per_group * groups
    kernel = draw(st.integers(1, 5))
    stride = draw(st.integers(2, 3)) if exact is False else draw(st.integers(1, 3))
    dilation = draw(st.integers(1, 2))
    k_eff = dilation * (kernel - 1) + 1
    # Padding up to half the kernel: every window then covers a real pixel (a window entirely
    # in the padding would make the output trivially symmetric).
    padding = draw(st.integers(0, min(2, k_eff // 2)))
    modes = (
        ["zeros", "zeros", "reflect", "replicate", "circular"] if any_padding_mode else ["zeros"]
    )
    padding_mode = draw(st.sampled_from(modes))
    # Candidate widths large enough for the kernel (and for reflect padding).
    low = max(k_eff - 2 * padding, padding + 1, 1)
    widths = range(low, low + 3 * stride + 8)

    def ok(w: int) -> bool:
        holds = (w + 2 * padding - k_eff) % stride == 0
        return exact is None or holds == exact

    width = draw(st.sampled_from([w for w in widths if ok(w)]))
    height = draw(st.integers(low, low + 4))
    return ConvCase(
        in_type, out_type, in_channels, out_channels, kernel, stride, padding, dilation, groups,
        draw(st.booleans()), padding_mode, draw(st.integers(1, 3)), height, width,
        draw(st.sampled_from([torch.float32, torch.float64])),
    )  # fmt: skip
