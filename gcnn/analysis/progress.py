"""Progress for the analysis passes: a tqdm bar on a terminal, plain lines otherwise.

On a terminal (stderr is a tty) each pass shows a transient tqdm bar. Otherwise — a log file,
a batch job, CI — each pass of at least 8 batches prints plain lines on stderr: one when a
quarter, a half and three quarters of it are done and one when it ends, with the elapsed time,
so a long run shows that it is alive (short passes stay quiet). ``GCNN_PROGRESS=0`` turns both
off.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def _lines(items: Iterable[T], desc: str, total: int | None) -> Iterator[T]:
    start = time.perf_counter()
    marks = {max(1, round(total * q)) for q in (0.25, 0.5, 0.75)} if total else set()
    done = 0
    for item in items:
        yield item
        done += 1
        if done in marks:
            elapsed = time.perf_counter() - start
            print(f"gcnn: {desc}: {done}/{total} batches, {elapsed:.1f} s", file=sys.stderr)
    elapsed = time.perf_counter() - start
    of = f"/{total}" if total else ""
    print(f"gcnn: {desc}: done, {done}{of} batches in {elapsed:.1f} s", file=sys.stderr)


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
    """``items`` with progress named ``desc`` (see the module docstring)."""
    if os.environ.get("GCNN_PROGRESS", "1") == "0":
        return items
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if sys.stderr.isatty():
        return tqdm(items, desc=desc, total=total, leave=False, unit="batch")
    return _lines(items, desc, total) if total is None or total >= 8 else items
