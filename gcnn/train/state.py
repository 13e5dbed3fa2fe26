"""Resumable training state and JSON sidecars, both written atomically (temp file + rename).

The training state is ONE safetensors file: the model's tensors under ``model.*``, the
optimizer's per-parameter tensors under ``optim.{i}.{name}``, and every scalar (step, epoch,
log history, optimizer hyper-parameters) as JSON in the file's metadata. One file means a kill
at any moment leaves either the previous state or the new one, never a mix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import Tensor

from gcnn.errors import CheckpointError
from gcnn.runs import json_safe, write_json

__all__ = ["load_train_state", "read_state_scalars", "save_train_state", "write_json"]

_META_KEY = "gcnn_train_state"


def save_train_state(
    path: str | Path,
    model_state: dict[str, Tensor],
    optimizer_state: dict[str, Any],
    scalars: dict[str, Any],
) -> Path:
    """Save model + optimizer tensors and ``scalars`` (JSON-able) to one safetensors file."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model_state.items()}
    for index, per_param in optimizer_state["state"].items():
        for name, value in per_param.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{index}.{name}"] = value.detach().cpu().contiguous()
    meta = json_safe({"scalars": scalars, "param_groups": optimizer_state["param_groups"]})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(meta, allow_nan=False)})
    os.replace(tmp, path)
    return path


def read_state_scalars(path: str | Path) -> dict[str, Any]:
    """The scalars of the state at ``path`` (step, history, config, …) without its tensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {})[_META_KEY])["scalars"]
    except Exception as err:  # safetensors/json raise several types
        raise CheckpointError(
            f"{path} is not a gcnn training state ({err}): delete it, or retrain with --overwrite"
        ) from err


def load_train_state(
    path: str | Path,
) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, Any]]:
    """Inverse of :func:`save_train_state`: ``(model_state, optimizer_state, scalars)``."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})[_META_KEY])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as err:  # safetensors/json raise several types
        raise CheckpointError(
            f"{path} is not a gcnn training state ({err}): delete it, or retrain with --overwrite"
        ) from err
    model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    per_param: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            per_param.setdefault(int(index), {})[name] = value
    optimizer_state = {"state": per_param, "param_groups": meta["param_groups"]}
    return model_state, optimizer_state, meta["scalars"]
