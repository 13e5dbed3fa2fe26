"""Deep copies of gcnn's escnn layers share escnn's immutable objects — and only those copies.

escnn's field types, gspaces, groups, representations and kernel bases are immutable, but a
deep copy of a module copies them and the whole group and representation graph behind them
(most of the time of copying a model). Inside :func:`sharing_escnn_constants` they deep-copy to
themselves. gcnn's escnn wrappers (:class:`SharesEscnnConstants`) deep-copy inside it, so
``copy.deepcopy`` of a gcnn escnn model is fast, while escnn's classes are left unchanged for
every other deep copy in the process (before, during import and after).
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Iterator
from typing import Any

from escnn import nn as enn
from escnn.group import Group, Representation
from escnn.gspaces import GSpace
from escnn.kernels import KernelBasis

IMMUTABLE_ESCNN_TYPES: tuple[type, ...] = (
    enn.FieldType,
    GSpace,
    Group,
    Representation,
    KernelBasis,
)
_lock = threading.RLock()
_depth = 0


def _share(self: object, memo: dict[int, Any]) -> object:
    return self


@contextlib.contextmanager
def sharing_escnn_constants() -> Iterator[None]:
    """Within the block, ``copy.deepcopy`` returns escnn's immutable objects themselves.

    Re-entrant; the classes get a ``__deepcopy__`` on entry of the outermost block and lose it
    on its exit (escnn defines none of its own, and one it did define would be kept).
    """
    global _depth
    with _lock:
        if _depth == 0:
            for cls in IMMUTABLE_ESCNN_TYPES:
                if "__deepcopy__" not in vars(cls):
                    cls.__deepcopy__ = _share  # type: ignore[attr-defined]
        _depth += 1
        try:
            yield
        finally:
            _depth -= 1
            if _depth == 0:
                for cls in IMMUTABLE_ESCNN_TYPES:
                    if vars(cls).get("__deepcopy__") is _share:
                        del cls.__deepcopy__  # type: ignore[attr-defined]


def deepcopy_sharing(obj: Any, memo: dict[int, Any] | None = None) -> Any:
    """``copy.deepcopy(obj)`` inside :func:`sharing_escnn_constants`."""
    with sharing_escnn_constants():
        return copy.deepcopy(obj, memo)


class SharesEscnnConstants:
    """Mixin: deep copies of this object share escnn's immutable objects (see module doc)."""

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        with sharing_escnn_constants():
            reductor = self.__reduce_ex__(4)
            return copy._reconstruct(self, memo, *reductor)  # type: ignore[attr-defined]
