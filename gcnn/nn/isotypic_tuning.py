"""``path="tuned"``: each flip conv times its kernels once per input shape and keeps the fastest.

The ``"auto"`` rule (:func:`gcnn.nn.isotypic.prefers_isotypic`, :func:`prefers_gemm`) is a
static threshold read off one CPU; which kernel wins depends on the CPU (its vector width and
oneDNN's kernels for it), the batch and the image size. ``"tuned"`` measures instead, as
``torch.backends.cudnn.benchmark`` does: the first forward of a regular → regular conv with a
new *key* (its :class:`~gcnn.nn.isotypic.IsotypicPlan`, the input's shape, strides, dtype and
device, and whether a backward follows) runs each candidate kernel on detached copies of the
input and weights — forward, plus backward when gradients are on — and caches the fastest
for the whole process (the ``"auto"`` rule's pick where it is within :data:`TUNING_MARGIN`).

Candidates (:data:`KERNELS`): ``"regular"`` (``F.conv2d`` on the full weight), ``"kh_x_1"``
(:func:`gcnn.nn.isotypic.regular_conv2d_eager`) and ``"gemm"``
(:func:`gcnn.nn.isotypic_gemm.regular_conv2d_gemm`). All three compute the same function to
float rounding, so the choice changes speed and rounding only — but it is a timing, so two
processes can choose differently and training with ``"tuned"`` is not bit-reproducible from
run to run (``"auto"`` is). Under ``torch.compile`` nothing is timed: ``"tuned"`` follows
``"auto"``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Mapping
from typing import Literal

import torch
from torch import Tensor

Kernel = Literal["regular", "kh_x_1", "gemm"]
KERNELS: tuple[Kernel, ...] = ("regular", "kh_x_1", "gemm")

#: Timed runs per candidate after one warm-up run; the minimum counts.
TUNING_REPEATS = 3
#: Another kernel replaces the ``"auto"`` rule's pick only when it is faster by more than
#: this fraction: closer timings are within a busy CPU's noise, and keeping the rule's pick
#: there makes the choice stabler from run to run.
TUNING_MARGIN = 0.05

_CHOICES: dict[Hashable, Kernel] = {}


def tuned_kernel(
    key: Hashable,
    candidates: Callable[[], Mapping[Kernel, Callable[[], Tensor]]],
    backward: bool,
    default: Callable[[], Kernel],
) -> Kernel:
    """The cached choice for ``key``, else time ``candidates()`` and cache :func:`choose`'s.

    ``candidates`` and ``default`` (the ``"auto"`` rule's kernel) are called only on a cache
    miss, keeping the hit cheap; each candidate runs one forward on detached leaves (so timing
    leaves no gradient on the real parameters)."""
    choice = _CHOICES.get(key)
    if choice is None:
        choice = _CHOICES[key] = choose(measure(candidates(), backward), default())
    return choice


def choose(seconds: Mapping[Kernel, float], default: Kernel) -> Kernel:
    """The fastest kernel, unless ``default`` is within :data:`TUNING_MARGIN` of it."""
    fastest = min(seconds, key=seconds.__getitem__)
    if seconds[default] <= seconds[fastest] * (1 + TUNING_MARGIN):
        return default
    return fastest


def measure(
    candidates: Mapping[Kernel, Callable[[], Tensor]], backward: bool
) -> dict[Kernel, float]:
    """Seconds per run of each candidate: forward (and backward of ``out.sum()`` when
    ``backward``), one warm-up, then the minimum of :data:`TUNING_REPEATS` runs."""

    def once(run: Callable[[], Tensor]) -> float:
        start = time.perf_counter()
        out = run()
        if backward:
            out.sum().backward()
        return time.perf_counter() - start

    times: dict[Kernel, float] = {}
    for name, run in candidates.items():
        once(run)
        times[name] = min(once(run) for _ in range(TUNING_REPEATS))
    return times


def tuned_choices() -> dict[Hashable, Kernel]:
    """A copy of this process's cache: key → chosen kernel."""
    return dict(_CHOICES)


def clear_tuned_choices() -> None:
    """Forget every choice (the next forward of each conv times its kernels again)."""
    _CHOICES.clear()


def tuning_key(plan: Hashable, x: Tensor, backward: bool) -> tuple[Hashable, ...]:
    """What a choice depends on: the conv's plan and the input's shape, strides, dtype, device."""
    return (plan, tuple(x.shape), x.stride(), x.dtype, x.device, backward)


def needs_backward(x: Tensor, params: list[Tensor]) -> bool:
    """Whether a backward will follow this forward (grad mode on and a leaf that wants one)."""
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params))
