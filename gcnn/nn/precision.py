"""The dtype low-precision tensors accumulate in."""

from __future__ import annotations

import torch
from torch import Tensor


def accumulation_dtype(t: Tensor) -> torch.dtype:
    """``t``'s dtype, at least float32: sums of bf16 / fp16 terms (BatchNorm statistics, the
    adjoints of the s/d passes) are accumulated in float32 and rounded once, as torch's own
    reductions and convolutions do."""
    return torch.promote_types(t.dtype, torch.float32)
