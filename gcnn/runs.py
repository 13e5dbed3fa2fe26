"""Run folders: their layout, the ``model.json`` sidecar, recipes, and :func:`load_run`.

``gcnn train`` writes one folder per seed, ``OUT/<arch>_<regime>_<data>/seed<N>/``:

- ``model.safetensors``: the final weights (train mode), present only when the run finished;
- ``model.json``: the sidecar (:func:`build_sidecar`), written last: a folder with both files is
  a finished run;
- ``log.jsonl``: one standard JSON line per epoch (no ``NaN``/``Infinity`` tokens);
- ``state.safetensors``: the resumable state while the run is unfinished.

Next to it, in ``OUT/<arch>_<regime>_<data>/``, live the run's hidden companions: the lock file
``.seed<N>.lock`` and, while an ``--overwrite`` trains, the new run ``.seed<N>.new/`` (it
replaces ``seed<N>/`` when it has finished; see :mod:`gcnn.train.guard`).

A recipe (``recipe.json``) and a sidecar share one schema for what they have in common: the
training settings under ``"config"`` (a :class:`~gcnn.train.config.TrainConfig` dict), and the
seeds (``"seeds"``: ``"0-3"`` or a list, or the sidecar's single ``"seed"``), so
``gcnn train --config`` reads either (:func:`read_recipe`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gcnn.errors import CheckpointError, UsageError

if TYPE_CHECKING:
    from torch import nn

    from gcnn.data.datasets import Dataset
    from gcnn.train.config import TrainConfig

__all__ = [
    "RECIPE_SCHEMA",
    "RunPaths",
    "build_sidecar",
    "data_identity",
    "json_safe",
    "load_run",
    "read_recipe",
    "read_sidecar",
    "run_name",
    "run_paths",
    "write_json",
    "write_jsonl",
    "write_recipe",
]

#: Keys every sidecar has (older sidecars too); ``load_run`` needs the first two.
SIDECAR_REQUIRED = ("arch", "arch_kwargs")
#: Written into new recipes (``gcnn train --config`` also reads older ``argv`` recipes).
RECIPE_SCHEMA = "gcnn.recipe/1"


@dataclass(frozen=True)
class RunPaths:
    """The files of one seed's run folder ``dir`` (and its hidden siblings)."""

    dir: Path

    @property
    def weights(self) -> Path:
        return self.dir / "model.safetensors"

    @property
    def sidecar(self) -> Path:
        return self.dir / "model.json"

    @property
    def state(self) -> Path:
        return self.dir / "state.safetensors"

    @property
    def log(self) -> Path:
        return self.dir / "log.jsonl"

    @property
    def finished(self) -> bool:
        """Whether the folder holds a finished run (weights and sidecar)."""
        return self.weights.is_file() and self.sidecar.is_file()

    @property
    def lock(self) -> Path:
        """The lock file of this run: ``.seed<N>.lock`` next to the folder."""
        return self.dir.with_name(f".{self.dir.name}.lock")

    @property
    def pending(self) -> RunPaths:
        """Where an ``--overwrite`` trains until it replaces this folder: ``.seed<N>.new``."""
        return RunPaths(self.dir.with_name(f".{self.dir.name}.new"))

    @property
    def discarded(self) -> Path:
        """Where the replaced run waits for deletion during the swap: ``.seed<N>.old``."""
        return self.dir.with_name(f".{self.dir.name}.old")


def run_name(cfg: TrainConfig) -> str:
    """``<arch>_<regime>_<data>``, ``+`` spelled ``-`` (e.g. ``vgg11_cnn-inv_fashion-mnist``)."""
    return f"{cfg.arch}_{cfg.regime.replace('+', '-')}_{cfg.data}"


def run_paths(out: str | Path, cfg: TrainConfig, seed: int) -> RunPaths:
    """The run folder of ``seed`` under ``out``: ``out/<run_name>/seed<N>``."""
    return RunPaths(Path(out) / run_name(cfg) / f"seed{seed}")


# --- JSON -------------------------------------------------------------------------------------


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, ±inf) replaced by ``None`` (standard JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def _atomic_write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented standard JSON to ``path`` atomically (non-finite → ``null``)."""
    text = json.dumps(json_safe(obj), indent=2, sort_keys=True, allow_nan=False)
    return _atomic_write(Path(path), text + "\n")


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write one standard JSON line per row to ``path`` atomically (non-finite → ``null``)."""
    text = "".join(json.dumps(json_safe(r), allow_nan=False) + "\n" for r in rows)
    return _atomic_write(Path(path), text)


# --- sidecar ----------------------------------------------------------------------------------


def data_identity(data: Dataset) -> dict[str, Any]:
    """What the run was trained on: dataset name, the folder it was read from (absolute;
    ``None`` for the shipped samples), its class names and both split sizes."""
    from gcnn.data.imagefolder import ImageFolderData

    if isinstance(data, ImageFolderData):
        root: str | None = str(Path(data.train.root).resolve().parent)
        train, test = len(data.train), len(data.test)
    else:
        root = data.root
        train, test = len(data.train_x), len(data.test_x)
    return {
        "dataset": data.name,
        "root": root,
        "classes": list(data.classes),
        "train_images": train,
        "test_images": test,
    }


def build_sidecar(
    cfg: TrainConfig,
    seed: int,
    arch_kwargs: dict[str, Any],
    identity: dict[str, Any],
    normalize: dict[str, list[float]],
    results: dict[str, Any],
) -> dict[str, Any]:
    """The ``model.json`` of a finished run.

    ``results`` adds the measured keys (``steps``, ``test_acc``, ``test_acc_tta``,
    ``test_loss``, ``train_time_s``, versions, ``device``, ``world_size``, ``torch_threads``,
    ``ranks_identical``). The keys of older sidecars keep their meaning; ``data`` (the data
    identity) is new.
    """
    return {
        "arch": cfg.arch,
        "arch_kwargs": arch_kwargs,
        "regime": cfg.regime,
        "inv_lambda": cfg.inv_lambda if cfg.regime == "cnn+inv" else 0.0,
        "inv_start": cfg.inv_start,
        "inv_target": cfg.inv_target,
        "seed": seed,
        "dataset": identity["dataset"],
        "train_images": identity["train_images"],
        "data": identity,
        "epochs": cfg.epochs,
        "normalize": normalize,
        "config": cfg.to_dict(),
        **results,
    }


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """The sidecar at ``path`` (a ``model.json``), checked for the keys :func:`load_run` needs."""
    path = Path(path)
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"sidecar not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is not a readable JSON sidecar ({err})") from err
    missing = [k for k in SIDECAR_REQUIRED if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise CheckpointError(
            f"{path} is not a gcnn model.json: it lacks {', '.join(missing)} (written by "
            "gcnn train next to model.safetensors)"
        )
    return meta


def _run_folder(where: str | Path) -> Path:
    path = Path(where)
    if path.is_file() and path.name in ("model.safetensors", "model.json", "state.safetensors"):
        return path.parent
    if path.is_file():
        raise CheckpointError(
            f"{path} is not a run folder: pass the folder that holds model.json and "
            "model.safetensors (or one of those files)"
        )
    if not path.is_dir():
        raise CheckpointError(f"run folder not found: {path}")
    return path


def load_run(
    folder: str | Path, *, device: str | None = None, eval_mode: bool = True
) -> tuple[nn.Module, dict[str, Any]]:
    """The trained model of a finished run folder and its sidecar: ``(model, meta)``.

    ``folder``: a run folder written by ``gcnn train`` (any version), a committed model in
    ``models/*/``, or its ``model.json`` / ``model.safetensors``. The model is built with
    ``gcnn.create_model(meta["arch"], **meta["arch_kwargs"])`` and the weights are loaded
    strictly; it comes back in eval mode (``eval_mode=False``: as saved, train mode) on
    ``device`` (default CPU). Inputs: ``(x / 255 − meta["normalize"]["mean"]) / std``.

    Raises :class:`~gcnn.errors.CheckpointError` for a missing folder, an unfinished run (with
    the command that resumes it), or unreadable/unfitting files.
    """
    from gcnn.models import create_model

    paths = RunPaths(_run_folder(folder))
    if not paths.weights.is_file():
        if paths.state.is_file():
            raise CheckpointError(
                f"{paths.dir} holds an unfinished run (state.safetensors, no "
                "model.safetensors): finish it with gcnn train --resume and the same settings"
            )
        raise CheckpointError(f"{paths.dir} has no model.safetensors: not a finished run")
    if not paths.sidecar.is_file():
        raise CheckpointError(
            f"{paths.dir} has model.safetensors but no model.json: build the model yourself "
            "and load it with gcnn.create_model(arch, weights=path, ...)"
        )
    meta = read_sidecar(paths.sidecar)
    try:
        model = create_model(meta["arch"], weights=paths.weights, **meta["arch_kwargs"])
    except TypeError as err:
        raise CheckpointError(
            f"{paths.sidecar}: {meta['arch']} does not accept {meta['arch_kwargs']} ({err})"
        ) from err
    except ValueError as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{paths.sidecar}: {err}") from err
    if device is not None:
        model = model.to(device)
    return (model.eval() if eval_mode else model), meta


# --- recipes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """A run's settings read from a recipe or sidecar: the config dict and the seeds (a
    ``--seeds`` string) if the file names them."""

    config: dict[str, Any]
    seeds: str | None
    source: Path


def read_recipe(path: str | Path) -> Recipe:
    """The ``"config"`` and seeds of a ``recipe.json`` or a ``model.json`` (see the module
    docstring). Raises :class:`~gcnn.errors.UsageError` naming the file and what is wrong."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.json" if (path / "model.json").is_file() else path / "recipe.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"--config {path} is not a JSON file ({err})") from err
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise UsageError(
            f'--config {path} has no "config" object: pass a recipe.json or a run\'s model.json'
        )
    seeds = meta.get("seeds", meta.get("seed"))
    if isinstance(seeds, list):
        seeds = ",".join(str(s) for s in seeds)
    return Recipe(config=meta["config"], seeds=None if seeds is None else str(seeds), source=path)


def write_recipe(path: str | Path, cfg: TrainConfig, seeds: str, **extra: Any) -> Path:
    """Write ``recipe.json``: ``{"schema", "config", "seeds", **extra}`` (``extra``: e.g.
    ``name``, ``note``, ``device``)."""
    return write_json(path, {"schema": RECIPE_SCHEMA, "config": cfg.to_dict(), "seeds": seeds,
                             **extra})  # fmt: skip
