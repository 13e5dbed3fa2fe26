"""Field layouts and the action of the horizontal flip on feature maps.

A feature map ``x`` of shape ``(B, C, H, W)`` (or ``(B, C)`` after global pooling) is a direct
sum of two kinds of fields, laid out as :class:`Fields` ``(trivial=t, regular=r)``,
``C = t + 2r``:

* the first ``t`` channels are **trivial** fields: the flip only mirrors the width,
  ``(g·x)[:, c] = x[:, c].flip(-1)``. Input images and invariant outputs (logits) are trivial;
* the next ``2r`` channels are **regular** fields, interleaved pairs ``(t + 2k, t + 2k + 1)``
  (escnn's layout for the regular representation of the flip group): the flip mirrors the width
  *and* swaps each pair, ``(g·x)[:, t + 2k] = x[:, t + 2k + 1].flip(-1)``.

So ``g·x = P x.flip(-1)`` with ``P`` the channel permutation :meth:`Fields.permutation`
(an involution: fixed on trivial channels, swapping pairs). ``"trivial"`` and ``"regular"`` are
shorthands for all-trivial and all-regular layouts of a given channel count
(:meth:`Fields.of`). For tensors without spatial dims mirroring is the identity, so a trivial
``(B, C)`` vector is invariant and a regular one only swaps its pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

import torch
from torch import Tensor

FieldType = Literal["trivial", "regular"]
FIELD_TYPES: tuple[str, ...] = ("trivial", "regular")


@dataclass(frozen=True)
class Fields:
    """A field layout: ``trivial`` trivial channels, then ``regular`` interleaved channel pairs.

    ``Fields(trivial=3, regular=2)`` has ``3 + 2·2 = 7`` channels; the flip fixes channels
    0, 1, 2 and swaps (3, 4) and (5, 6).
    """

    trivial: int = 0
    regular: int = 0

    def __post_init__(self) -> None:
        if self.trivial < 0 or self.regular < 0:
            raise ValueError(f"field counts must be ≥ 0, got {self}")

    @property
    def channels(self) -> int:
        """Number of channels, ``trivial + 2·regular``."""
        return self.trivial + 2 * self.regular

    @property
    def is_trivial(self) -> bool:
        """Every channel is a trivial field (the flip only mirrors)."""
        return self.regular == 0

    @property
    def is_regular(self) -> bool:
        """Every channel belongs to a regular field (a pair)."""
        return self.trivial == 0

    @classmethod
    def of(cls, spec: FieldSpec, channels: int | None = None) -> Fields:
        """The layout ``spec`` names: a :class:`Fields` (checked against ``channels`` when given),
        or the shorthand ``"trivial"`` / ``"regular"`` for ``channels`` channels."""
        if isinstance(spec, Fields):
            if channels is not None and spec.channels != channels:
                raise ValueError(f"{spec} has {spec.channels} channels, expected {channels}")
            return spec
        check_field_type(spec)
        if channels is None:
            raise ValueError(f"the shorthand {spec!r} needs a channel count")
        if spec == "trivial":
            return cls(trivial=channels)
        if channels % 2:
            raise ValueError(f"a regular field needs an even number of channels, got {channels}")
        return cls(regular=channels // 2)

    def permutation(self, device: torch.device | str | None = None) -> Tensor:
        """The flip's channel permutation ``σ`` (long, ``(channels,)``): ``(g·x)[:, c] =
        x[:, σ[c]].flip(-1)``; identity on trivial channels, swaps each pair. ``σ∘σ = id``."""
        fixed = torch.arange(self.trivial, device=device)
        pairs = torch.arange(2 * self.regular, device=device).view(-1, 2).flip(1).reshape(-1)
        return torch.cat((fixed, pairs + self.trivial))

    def act(self, x: Tensor, dim: int = 1) -> Tensor:
        """Permute ``x`` along ``dim`` by :meth:`permutation` (no mirroring)."""
        dim = dim % x.dim()
        if x.shape[dim] != self.channels:
            raise ValueError(f"{self} needs {self.channels} channels, got {x.shape[dim]}")
        if self.is_trivial:
            return x
        pairs = x.narrow(dim, self.trivial, 2 * self.regular).unflatten(dim, (-1, 2))
        swapped = pairs.flip(dim + 1).flatten(dim, dim + 1)
        if self.is_regular:
            return swapped
        return torch.cat((x.narrow(dim, 0, self.trivial), swapped), dim)

    def __str__(self) -> str:
        if self.regular == 0:
            return f"trivial({self.trivial})"
        if self.trivial == 0:
            return f"regular({self.regular})"
        return f"trivial({self.trivial})+regular({self.regular})"


FieldSpec: TypeAlias = Fields | FieldType


def check_field_type(field: object, name: str = "field type") -> FieldType:
    """Return ``field`` if it is a known field-type shorthand, else raise ``ValueError``."""
    if field not in FIELD_TYPES:
        raise ValueError(f"{name} must be one of {FIELD_TYPES} or a Fields, got {field!r}")
    return field  # type: ignore[return-value]


def check_field_spec(spec: object, name: str = "field type") -> FieldSpec:
    """Return ``spec`` if it is a :class:`Fields` or a shorthand, else raise ``ValueError``."""
    if isinstance(spec, Fields):
        return spec
    return check_field_type(spec, name)


def swap_pairs(x: Tensor, dim: int = 1) -> Tensor:
    """Swap the interleaved channel pairs ``(2k, 2k+1)`` along ``dim`` (size must be even)."""
    return Fields.of("regular", x.shape[dim]).act(x, dim)


def flip_action(x: Tensor, field: FieldSpec = "trivial") -> Tensor:
    """The horizontal flip acting on a field ``x`` of shape ``(B, C, *spatial)``.

    Mirrors the last (width) dim when ``x`` has spatial dims and permutes the channels by the
    layout's :meth:`Fields.permutation` (a shorthand applies to all ``C`` channels).
    """
    fields = Fields.of(check_field_spec(field), x.shape[1])
    if x.dim() >= 3:
        x = x.flip(-1)
    return fields.act(x, 1)


def involution_layout(perm: Tensor) -> tuple[Tensor, Fields]:
    """Reorder a channel involution into a :class:`Fields` layout.

    For an involution ``perm`` (``perm[perm[c]] == c``: every channel fixed or swapped with one
    partner) returns ``order`` (long, ``(C,)``) and the layout ``Fields(t, r)`` with ``t`` fixed
    points and ``r`` 2-cycles: channel ``k`` of the reordered tensor ``x[:, order]`` is
    channel ``order[k]`` of ``x``; the fixed points come first (ascending), then each 2-cycle
    ``(a, b)``, ``a < b``, on consecutive positions. In the new order ``perm`` acts as the
    layout's :meth:`Fields.permutation`. Raises ``ValueError`` when ``perm`` is no involution.
    """
    p = perm.long().cpu()
    n = len(p)
    if sorted(p.tolist()) != list(range(n)) or not torch.equal(p[p], torch.arange(n)):
        raise ValueError("not an involution: every channel must be fixed or in one 2-cycle")
    channels = torch.arange(n)
    fixed = channels[p == channels]
    first = channels[p > channels]
    pairs = torch.stack((first, p[first]), dim=1).flatten()
    return torch.cat((fixed, pairs)), Fields(trivial=len(fixed), regular=len(first))
