"""Read pickled numpy batches (CIFAR-10's ``data_batch_*``) without running pickled code.

A pickle can name any importable callable; :class:`NumpyOnlyUnpickler` refuses every global
except the few numpy uses to rebuild arrays (``ndarray``, ``dtype``, ``_reconstruct``,
``_frombuffer``, and ``_codecs.encode`` for protocol-2 bytes), so a hostile file raises
:class:`pickle.UnpicklingError` instead of executing.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

_ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 spell bytes
    }
)


class NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that only rebuilds numpy arrays and plain Python containers."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only numpy arrays are allowed"
            )
        return super().find_class(module, name)


def load_numpy_pickle(path: str | Path) -> Any:
    """Unpickle ``path`` allowing only numpy arrays; bytes keys are decoded to ``str``.

    Python 2 pickles (the original CIFAR-10 batches) are read with ``encoding="bytes"``.
    """
    with open(path, "rb") as f:
        obj = NumpyOnlyUnpickler(f, encoding="bytes").load()
    if isinstance(obj, dict):
        obj = {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}
    return obj
