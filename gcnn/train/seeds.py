"""Parse seed lists such as ``0-23``, ``0,3,7`` or ``0-3,10``."""

from __future__ import annotations


def parse_seeds(text: str) -> list[int]:
    """``"0-3,7"`` → ``[0, 1, 2, 3, 7]``; raises ``ValueError`` on empty, reversed or repeated."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            first, last = (int(lo), int(hi)) if sep else (int(part), int(part))
        except ValueError:
            raise ValueError(f"bad seed list {text!r}: use e.g. 0-23 or 0,3,7") from None
        if first < 0 or last < first:
            raise ValueError(f"bad seed range {part!r} in {text!r}: need 0 ≤ first ≤ last")
        seeds.extend(range(first, last + 1))
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seed list {text!r} repeats a seed")
    return seeds
