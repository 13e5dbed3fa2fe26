"""``--device`` strings → ``torch.device``, with one-line errors for devices that do not exist."""

from __future__ import annotations

import torch

from gcnn.errors import UsageError

__all__ = ["resolve_device"]


def resolve_device(requested: str | None, local_rank: int = 0) -> torch.device:
    """``requested`` (``cpu``, ``cuda``, ``cuda:1``, ``mps``, …) or, if ``None``,
    ``cuda:{local_rank}`` when CUDA is available, else the CPU.

    A bare ``cuda`` becomes ``cuda:{local_rank}``. Raises :class:`~gcnn.errors.UsageError` for
    a device string torch does not know, or a CUDA/MPS device this machine does not have.
    """
    if requested is None:
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise UsageError(
            f"--device {requested!r} is not a device: use cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"--device {requested}: this machine has no usable CUDA GPU (torch "
                f"{torch.__version__}); use --device cpu or leave --device out"
            )
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise UsageError(
                f"--device {requested}: only {torch.cuda.device_count()} CUDA device(s) here"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {requested}: MPS is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {requested}: gcnn trains on cpu, cuda or mps only")
    return device
