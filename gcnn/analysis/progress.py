"""Progress bars for the analysis passes (tqdm, on stderr, off when not a terminal or disabled)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
    """Wrap ``items`` in a tqdm bar named ``desc``; ``GCNN_PROGRESS=0`` turns bars off."""
    enabled = os.environ.get("GCNN_PROGRESS", "1") != "0" and sys.stderr.isatty()
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    return tqdm(items, desc=desc, total=total, disable=not enabled, leave=False, unit="batch")
