"""How ``path="auto"`` picks a flip conv's kernel: measured once per machine, then kept.

Which kernel computes a regular → regular flip conv fastest — ``F.conv2d`` on the full weight,
or one of the two s/d kernels at half the multiply-adds — depends on the processor, not only on
the conv: on four 2-core CPUs (``benchmarks/results/isotypic_cpu_*_layers.json``, forward +
backward) a 512 → 512 3×3 conv at 4×4, batch 128, ran 1.72× faster than ``F.conv2d`` as the
GEMM kernel on one AMD EPYC and 0.60–1.06× on an Intel Xeon and two other AMD EPYCs, where the
``kh × 1`` kernel won instead (1.24–1.55×); 256 → 256 at 8×8 gained 1.05–1.13× on the three
EPYCs and lost on the Xeon (0.97×). No static rule fits them all, so ``"auto"``
measures, like ``torch.backends.cudnn.benchmark``: the first forward of a regular → regular
conv with a new *key* (its :class:`~gcnn.nn.isotypic.IsotypicPlan`, the input's shape,
strides, dtype and device, and whether a backward follows) runs each candidate of
:data:`KERNELS` on detached copies of the input and weights — forward, plus backward when
gradients are on — and keeps the fastest, unless the static rule's pick
(:func:`gcnn.nn.isotypic.prefers_isotypic`) is within :data:`TUNING_MARGIN` of it.

Each choice is kept for the process and written to a per-machine file
(:mod:`gcnn.nn.tuning_store`), which later processes read instead of timing again: the
choice then does not change from run to run on one machine, so training stays bit-reproducible
there (a resumed run computes what the uninterrupted one did). Convs below
:data:`MIN_MACS_TO_TUNE` multiply-adds per output pixel are not timed (cheap on any
path) and run ``F.conv2d``; on the ``"static"`` path the static rule decides without timing.
Under ``torch.compile`` dynamo traces fake tensors, so the kernels are timed while it traces,
on a random channels-last stand-in of the traced input (inductor runs a graph's convs
channels-last), and the choice enters the graph as a constant
(``gcnn.nn.conv._kernel_at_trace_time``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Mapping
from typing import Literal

import torch
from torch import Tensor

from gcnn.nn import tuning_store

Kernel = Literal["regular", "kh_x_1", "gemm"]
KERNELS: tuple[Kernel, ...] = ("regular", "kh_x_1", "gemm")

#: Convs with fewer multiply-adds per output pixel (``c_in·c_out·kh·kw/groups``) are not
#: timed and run ``F.conv2d``: their conv is cheap on any path, and tests and toy models make
#: them by the hundred. The smallest layers measured sit just above it (64 → 64 1×1, 2¹²:
#: the GEMM kernel won 1.23× on one AMD EPYC and lost 0.51–0.79× on two other CPUs).
MIN_MACS_TO_TUNE = 2**12
#: Timed runs per candidate after one warm-up run; the minimum counts.
TUNING_REPEATS = 3
#: Another kernel replaces the static rule's pick only when it is faster by more than
#: this fraction: closer timings are within a busy CPU's noise, and keeping the rule's pick
#: there makes the choice stabler from run to run.
TUNING_MARGIN = 0.05

_CHOICES: dict[Hashable, Kernel] = {}


def worth_tuning(macs_per_pixel: int) -> bool:
    """Whether a conv with this many multiply-adds per output pixel is timed at all
    (:data:`MIN_MACS_TO_TUNE`)."""
    return macs_per_pixel >= MIN_MACS_TO_TUNE


def tuned_kernel(
    key: Hashable,
    device: torch.device,
    candidates: Callable[[], Mapping[Kernel, Callable[[], Tensor]]],
    backward: bool,
    default: Callable[[], Kernel],
) -> Kernel:
    """The choice for ``key``: from this process's cache, else from the machine's file
    (:mod:`gcnn.nn.tuning_store`), else timed now (:func:`measure`, :func:`choose`) and stored.

    ``candidates`` and ``default`` (the static rule's kernel) are called only when the key is
    new to the machine, keeping the hit cheap; each candidate runs on detached leaves (so
    timing leaves no gradient on the real parameters)."""
    choice = _CHOICES.get(key)
    if choice is not None:
        return choice
    machine = tuning_store.machine_id(device)
    stored = tuning_store.load(machine).get(repr(key))
    if stored in KERNELS:
        choice = stored
    else:
        choice = choose(measure(candidates(), backward), default())
        tuning_store.save(machine, repr(key), choice)
    _CHOICES[key] = choice
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
        if out.device.type == "cuda":
            torch.cuda.synchronize(out.device)
        return time.perf_counter() - start

    times: dict[Kernel, float] = {}
    for name, run in candidates.items():
        once(run)
        times[name] = min(once(run) for _ in range(TUNING_REPEATS))
    return times


def tuned_choices() -> dict[Hashable, Kernel]:
    """A copy of this process's cache: key → chosen kernel."""
    return dict(_CHOICES)


def clear_tuned_choices(stored: bool = False) -> None:
    """Forget this process's choices; with ``stored``, also this machine's file entries for the
    CPU (so the next forward of each conv times its kernels again)."""
    _CHOICES.clear()
    if stored:
        tuning_store.forget(tuning_store.machine_id(torch.device("cpu")))


def tuning_key(plan: Hashable, x: Tensor, backward: bool) -> tuple[Hashable, ...]:
    """What a choice depends on: the conv's plan and the input's shape, strides, dtype, device."""
    return (plan, tuple(x.shape), x.stride(), x.dtype, x.device, backward)


def needs_backward(x: Tensor, params: list[Tensor]) -> bool:
    """Whether a backward will follow this forward (grad mode on and a leaf that wants one)."""
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params))
