"""Learning-rate schedule: linear warm-up then linear decay to zero, per step."""

from __future__ import annotations


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of the peak learning rate for optimizer step ``step`` (0-based).

    ``(step + 1) / warmup_steps`` during warm-up, then
    ``(total − step) / (total − warmup)`` down to ``1 / (total − warmup)`` at the last step
    (the factor after the last step would be 0).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
