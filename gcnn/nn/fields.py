"""Field types and the action of the horizontal flip on feature maps.

A feature map ``x`` of shape ``(B, C, H, W)`` (or ``(B, C)`` after global pooling) carries
one of two field types:

* ``"trivial"``: the flip only mirrors the width, ``g·x = x.flip(-1)``. Input images and
  invariant outputs (logits) are trivial fields.
* ``"regular"``: ``C`` is even and the channels form interleaved pairs ``(2k, 2k+1)``
  (escnn's layout for the regular representation of the flip group). The flip mirrors the
  width *and* swaps each pair: ``(g·x)[:, 2k] = x[:, 2k+1].flip(-1)``.

For tensors without spatial dims, mirroring is the identity, so a trivial ``(B, C)`` field is
invariant and a regular one only swaps its pairs.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

FieldType = Literal["trivial", "regular"]
FIELD_TYPES: tuple[str, ...] = ("trivial", "regular")


def check_field_type(field: str, name: str = "field type") -> FieldType:
    """Return ``field`` if it is a known field type, else raise ``ValueError``."""
    if field not in FIELD_TYPES:
        raise ValueError(f"{name} must be one of {FIELD_TYPES}, got {field!r}")
    return field  # type: ignore[return-value]


def swap_pairs(x: Tensor, dim: int = 1) -> Tensor:
    """Swap the interleaved channel pairs ``(2k, 2k+1)`` along ``dim`` (size must be even)."""
    size = x.shape[dim]
    if size % 2:
        raise ValueError(f"a regular field needs an even number of channels, got {size}")
    perm = torch.arange(size, device=x.device).view(-1, 2).flip(1).reshape(-1)
    return x.index_select(dim, perm)


def flip_action(x: Tensor, field: str = "trivial") -> Tensor:
    """The horizontal flip acting on a field ``x`` of shape ``(B, C, *spatial)``.

    Mirrors the last (width) dim when ``x`` has spatial dims, and swaps channel pairs when
    ``field == "regular"``.
    """
    check_field_type(field)
    if x.dim() >= 3:
        x = x.flip(-1)
    if field == "regular":
        x = swap_pairs(x, 1)
    return x
