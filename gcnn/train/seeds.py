"""Parse seed lists such as ``0-23``, ``0,3,7`` or ``0-3,10``."""

from __future__ import annotations

from gcnn.errors import UsageError

#: Seeds must fit ``torch.manual_seed`` and numpy's ``SeedSequence``: ``0 ≤ seed < 2**63``.
MAX_SEED = 2**63 - 1


def parse_seeds(text: str) -> list[int]:
    """``"0-3,7"`` → ``[0, 1, 2, 3, 7]``; raises :class:`~gcnn.errors.UsageError` on empty,
    reversed, repeated or out-of-range seeds."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            first, last = (int(lo), int(hi)) if sep else (int(part), int(part))
        except ValueError:
            raise UsageError(f"bad --seeds {text!r}: use e.g. 0-23 or 0,3,7") from None
        if first < 0 or last < first:
            raise UsageError(f"bad seed range {part!r} in --seeds {text!r}: need 0 ≤ first ≤ last")
        if last > MAX_SEED:
            raise UsageError(
                f"seed {last} in --seeds {text!r} is too large: seeds must be < 2**63 "
                f"({MAX_SEED + 1})"
            )
        if last - first > 100_000:
            raise UsageError(f"--seeds {text!r} asks for {last - first + 1} runs; at most 100001")
        seeds.extend(range(first, last + 1))
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds {text!r} repeats a seed")
    return seeds
