"""Load and save model weights safely: safetensors, or torch state dicts with weights_only."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch
from torch import Tensor, nn

from gcnn.errors import CheckpointError

__all__ = ["CheckpointError", "load_weights", "read_state_dict", "save_weights"]

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
_PREFIXES = ("module.", "_orig_mod.")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from ``path`` without running any pickled code.

    ``*.safetensors`` files are read with safetensors; anything else with
    ``torch.load(weights_only=True)``. A dict wrapping the weights under ``state_dict``,
    ``model_state_dict`` or ``model`` is unwrapped, and the ``module.`` (DDP) and
    ``_orig_mod.`` (torch.compile) prefixes are stripped.
    """
    path = Path(path)
    if path.is_dir():
        inside = [p.name for p in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.pt*"))]
        hint = f" (it holds {', '.join(inside[:3])})" if inside else ""
        raise CheckpointError(
            f"{path} is a directory, not a checkpoint file{hint}: pass the weights file inside "
            "it, e.g. model.safetensors, or load a run folder with gcnn.runs.load_run"
        )
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (no such file)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): the file was not written completely")
    if path.suffix == ".safetensors":
        state = _read_safetensors(path)
    else:
        state = _read_torch(path)
    return _normalise(state, path)


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({err}): re-save it with "
            "gcnn.save_weights or safetensors.torch.save_file"
        ) from err


def _read_torch(path: Path) -> object:
    """``torch.load(weights_only=True)``; every failure becomes a :class:`CheckpointError`."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        found = re.search(r"GLOBAL (\S+) (?:whose|was not)", text) or re.search(
            r"Unsupported global: GLOBAL (\S+)", text
        )
        if found or "unsupported global" in text.lower():
            name = found.group(1) if found else "a Python callable"
            raise CheckpointError(
                f"{path} carries pickled code ({name}), which gcnn refuses to run "
                "(torch.load(weights_only=True)); if you trust the file, re-save its weights "
                "as safetensors: gcnn.save_weights(torch.load(path, weights_only=False)"
                ".state_dict(), 'model.safetensors')"
            ) from err
        first = text.strip().splitlines()[0] if text.strip() else "no reason given"
        raise CheckpointError(
            f"{path} is not a torch checkpoint: unreadable pickle ({first})"
        ) from err
    except Exception as err:  # torch.load raises KeyError, EOFError, RuntimeError, … on junk
        reason = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        raise CheckpointError(
            f"{path} is not a torch checkpoint ({reason}): expected a file written by "
            "torch.save or a .safetensors file"
        ) from err


def _normalise(state: object, path: Path) -> dict[str, Tensor]:
    while isinstance(state, dict):
        inner = next((state[k] for k in _WRAPPER_KEYS if isinstance(state.get(k), dict)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    out = {}
    for key, value in state.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def _summary(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load the checkpoint at ``path`` into ``model`` (strict); return ``model``.

    Raises :class:`CheckpointError` naming the missing, unexpected and mis-shaped keys.
    """
    state = read_state_dict(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)}≠{tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        parts = [f"checkpoint {path} does not fit {type(model).__name__}:"]
        if missing:
            parts.append(f"missing keys: {_summary(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_summary(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatch (checkpoint≠model): {_summary(mismatched)}")
        raise CheckpointError("; ".join(parts))
    model.load_state_dict(state)
    return model


def save_weights(model: nn.Module | dict[str, Tensor], path: str | Path) -> Path:
    """Save a model's state dict (or a state dict) as safetensors, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    state = model.state_dict() if isinstance(model, nn.Module) else model
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(tmp))
    tmp.replace(path)
    return path
