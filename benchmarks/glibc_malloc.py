"""Keep glibc's allocator from handing big tensors' memory back to the kernel between steps.

PyTorch's CPU allocator is ``malloc``. glibc serves blocks above ``M_MMAP_THRESHOLD`` with a
fresh ``mmap`` and gives freed memory at the top of the heap back once more than
``M_TRIM_THRESHOLD`` is free; both thresholds move with the history of allocations (the
"dynamic threshold"). So whether a training step's activations land on memory the process
already holds, or on new pages the kernel must fault in and zero, depends on what ran before:
on a 2-core AMD EPYC, plain ResNet50 at batch 32 took 50 600–53 500 minor page faults and
0.19–0.20 s of system time per 0.6–0.7 s step, and 0–320 faults with the thresholds pinned
(0.44–0.51 s per step; benchmarks/README.md). Interleaved benchmarks of several models change
that history from round to round.

:func:`pin` fixes both thresholds (``mallopt``; the same as starting Python with
``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=2147483647``): blocks up to 32 MiB
(the largest glibc accepts) come from the heap, and the heap is never trimmed. Memory then
stays at the process's peak, which is what a training loop reaches anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int


def pin() -> str:
    """Fix glibc's mmap and trim thresholds; returns what was done, for a report."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(
            M_TRIM_THRESHOLD, TRIM_THRESHOLD
        )
    except (OSError, AttributeError):
        ok = False
    if not ok:
        return "default (mallopt not available: not glibc)"
    return "glibc, mmap threshold 32 MiB, trim threshold 2 GiB (pinned)"


def minor_faults() -> int:
    """Minor page faults of this process so far (``getrusage``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
