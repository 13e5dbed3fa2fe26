"""Measured conv-kernel choices kept on disk, per machine, so a choice is made once.

A timing is not reproducible, a file is: once a conv's kernel has been measured on a machine,
every later process on that machine (a resumed training run, the next seed) reads the same
choice and computes the same bits. Like FFTW's wisdom or Triton's cache.

The file is JSON, ``{"version": 1, "machines": {machine: {key: kernel}}}``, where ``machine``
names what the timing depends on (:func:`machine_id`: CPU model and instruction-set flags or
GPU name, torch version, thread count) and ``key`` is the ``repr`` of a tuning key. Where it
lives: ``$GCNN_TUNING_CACHE`` if set (``off`` or empty: nothing is read or written), else
``$XDG_CACHE_HOME/gcnn/conv_tuning.json`` (``~/.cache/gcnn/conv_tuning.json``). Writes are
atomic (a temporary file, then ``os.replace``) and merge with what is on disk, so concurrent
processes lose at most a choice, which is then measured again. A file that cannot be read or
written is reported once (a warning) and tuning goes on in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from functools import cache
from pathlib import Path

import torch

ENV_VAR = "GCNN_TUNING_CACHE"
FORMAT_VERSION = 1
_warned: set[str] = set()


def store_path() -> Path | None:
    """The cache file, or ``None`` when ``$GCNN_TUNING_CACHE`` turns persistence off."""
    configured = os.environ.get(ENV_VAR)
    if configured is not None:
        return None if configured.strip().lower() in ("", "off", "0", "none") else Path(configured)
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = Path.home() / ".cache"
        except RuntimeError:  # no home directory (some containers): keep choices in memory
            return None
    return Path(base) / "gcnn" / "conv_tuning.json"


@cache
def _cpu_id() -> str:
    """The CPU's model name and a hash of its instruction-set flags (VMs often hide the model:
    two different AMD EPYC generations both report ``AMD EPYC``)."""
    model, flags = "unknown cpu", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "model name" and model == "unknown cpu":
                model = value.strip()
            elif name.strip() == "flags" and not flags:
                flags = " ".join(sorted(value.split()))
    except OSError:
        import platform

        model = platform.processor() or platform.machine()
    digest = hashlib.sha256(flags.encode()).hexdigest()[:12]
    return f"{model} [{torch.backends.cpu.get_cpu_capability()} {digest}]"


def machine_id(device: torch.device) -> str:
    """What a kernel timing on ``device`` depends on besides the conv: the processor, the torch
    build and, on the CPU, the thread count."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} | torch {torch.__version__}"
    return f"{_cpu_id()} | {torch.get_num_threads()} threads | torch {torch.__version__}"


def _warn_once(path: Path, action: str, error: Exception) -> None:
    if str(path) not in _warned:
        _warned.add(str(path))
        warnings.warn(
            f"gcnn: cannot {action} the conv tuning cache {path} ({error}); choices are kept "
            f"in memory only (set {ENV_VAR}=off to silence this)",
            RuntimeWarning,
            stacklevel=3,
        )


def _read(path: Path) -> dict:
    if not path.exists():
        return {"version": FORMAT_VERSION, "machines": {}}
    try:
        data = json.loads(path.read_text())
        if data.get("version") != FORMAT_VERSION or not isinstance(data.get("machines"), dict):
            raise ValueError(f"not a version-{FORMAT_VERSION} gcnn tuning cache")
        return data
    except (OSError, ValueError) as error:
        _warn_once(path, "read", error)
        return {"version": FORMAT_VERSION, "machines": {}}


def load_all() -> dict[str, dict[str, str]]:
    """Every machine's stored choices: machine id → (``repr(key)`` → kernel name)."""
    path = store_path()
    return {} if path is None else {m: dict(c) for m, c in _read(path)["machines"].items()}


def load(machine: str) -> dict[str, str]:
    """The stored choices of ``machine``: ``repr(key)`` → kernel name (empty when none)."""
    return load_all().get(machine, {})


def _write(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` atomically: a reader sees the old file or the new one."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "w", dir=path.parent, prefix=path.name, suffix=".tmp", delete=False
        ) as tmp:
            json.dump(data, tmp, indent=1, sort_keys=True)
        os.replace(tmp.name, path)
    except OSError as error:
        _warn_once(path, "write", error)


def save(machine: str, key: str, kernel: str) -> None:
    """Add one choice to the file (re-read and merged, then written atomically)."""
    path = store_path()
    if path is None:
        return
    data = _read(path)
    data["machines"].setdefault(machine, {})[key] = kernel
    _write(path, data)


def forget(machine: str) -> None:
    """Remove ``machine``'s stored choices from the file (other machines' stay)."""
    path = store_path()
    if path is None or not path.exists():
        return
    data = _read(path)
    if data["machines"].pop(machine, None) is not None:
        _write(path, data)
