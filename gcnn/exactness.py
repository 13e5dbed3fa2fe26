"""When does a horizontal flip of the input commute exactly with a network?

A window op (conv or pool) with kernel ``k``, dilation ``d``, padding ``p`` and stride ``s`` on
an input of width ``W`` places its windows at ``-p, -p + s, …``; mirrored, they land on the same
grid only if the last window ends exactly at ``W + p``, that is if

    (W + 2p - d·(k - 1) - 1) % s == 0.

The rule must hold at every strided op, with the width that op actually sees. Ops with stride 1
always satisfy it; asymmetric padding (``F.pad`` with left ≠ right) always breaks it.

:func:`flip_exactness` traces any model on the ``meta`` device (no compute, no memory), records
every window op with its width, and reports which ops break the rule and the nearest input
widths at which the model is exact.
"""

from __future__ import annotations

import contextvars
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

_TRACING: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "gcnn_exactness_tracing", default=False
)


class FlipExactnessWarning(UserWarning):
    """A flip model runs at an input size where the flip does not commute exactly."""


@dataclass(frozen=True)
class WindowOp:
    """One window op along the width, as seen during a forward pass."""

    module: str  # dotted module path ('' for the root), or the op name for functional calls
    op: str  # 'conv', 'max_pool', 'avg_pool' or 'pad'
    width: int  # width of the op's input
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    pad_left: int = 0  # only for 'pad'
    pad_right: int = 0  # only for 'pad'

    @property
    def remainder(self) -> int:
        """``(W + 2p - d(k-1) - 1) % s``; zero means the op commutes with the flip."""
        if self.op == "pad":
            return abs(self.pad_left - self.pad_right)
        return (self.width + 2 * self.padding - self.dilation * (self.kernel - 1) - 1) % self.stride

    @property
    def exact(self) -> bool:
        return self.remainder == 0

    def describe(self) -> str:
        where = self.module or "<root>"
        if self.op == "pad":
            return (
                f"{where} (pad left={self.pad_left} ≠ right={self.pad_right}, width {self.width})"
            )
        return (
            f"{where} ({self.op} k={self.kernel} s={self.stride} p={self.padding}"
            + (f" d={self.dilation}" if self.dilation != 1 else "")
            + f" on width {self.width}: remainder {self.remainder})"
        )


@dataclass
class ExactnessReport:
    """Whether ``model(x.flip(-1))`` can equal the flip of ``model(x)`` at one input size."""

    input_size: tuple[int, int]
    ops: list[WindowOp]
    nearest_exact: tuple[int | None, int | None] = (None, None)  # widths below / above
    strided_ops: list[WindowOp] = field(init=False)
    breaking_ops: list[WindowOp] = field(init=False)

    def __post_init__(self) -> None:
        self.strided_ops = [o for o in self.ops if o.op == "pad" or o.stride > 1]
        self.breaking_ops = [o for o in self.ops if not o.exact]

    @property
    def exact(self) -> bool:
        return not self.breaking_ops

    def __bool__(self) -> bool:
        return self.exact

    def __str__(self) -> str:
        h, w = self.input_size
        if self.exact:
            return f"flip-exact at {h}×{w} ({len(self.strided_ops)} strided ops checked)"
        below, above = self.nearest_exact
        near = ", ".join(f"{x}" for x in (below, above) if x is not None) or "none found"
        broken = "; ".join(o.describe() for o in self.breaking_ops)
        return f"not flip-exact at {h}×{w}: {broken}. Nearest exact widths: {near}"


class _WindowOpRecorder(TorchDispatchMode):
    """Records conv, pool and pad calls at the aten level, tagged with the current module."""

    def __init__(self, module_stack: list[str]) -> None:
        super().__init__()
        self.module_stack = module_stack
        self.ops: list[WindowOp] = []

    def _where(self, func_name: str) -> str:
        return self.module_stack[-1] if self.module_stack else func_name

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        op = self._describe(func, args)
        if op is not None:
            self.ops.append(op)
        return func(*args, **kwargs)

    def _describe(self, func, args) -> WindowOp | None:  # noqa: ANN001
        x = args[0] if args else None
        if not isinstance(x, Tensor) or x.dim() < 3:
            return None
        width, where = x.shape[-1], self._where(str(func))
        if func in (aten.convolution.default, aten._convolution.default):
            weight, stride, padding, dilation, transposed = (
                args[1],
                args[3],
                args[4],
                args[5],
                args[6],
            )
            if transposed:
                return None
            return WindowOp(
                where, "conv", width, weight.shape[-1], stride[-1], padding[-1], dilation[-1]
            )
        if func in (aten.max_pool2d_with_indices.default, aten.max_pool2d.default):
            kernel, stride, padding, dilation = _pool_args(args, with_dilation=True)
            return WindowOp(where, "max_pool", width, kernel, stride, padding, dilation)
        if func == aten.avg_pool2d.default:
            kernel, stride, padding, _ = _pool_args(args, with_dilation=False)
            return WindowOp(where, "avg_pool", width, kernel, stride, padding)
        if func == aten.constant_pad_nd.default:
            pad = list(args[1])
            return WindowOp(where, "pad", width, pad_left=pad[0], pad_right=pad[1])
        if func in (aten.reflection_pad2d.default, aten.replication_pad2d.default):
            pad = list(args[1])
            return WindowOp(where, "pad", width, pad_left=pad[0], pad_right=pad[1])
        return None


def _last(values, default: int) -> int:  # noqa: ANN001
    values = list(values) if values is not None else []
    return int(values[-1]) if values else default


def _pool_args(args, with_dilation: bool) -> tuple[int, int, int, int]:  # noqa: ANN001
    kernel = _last(args[1], 1)
    stride = _last(args[2] if len(args) > 2 else None, kernel)
    padding = _last(args[3] if len(args) > 3 else None, 0)
    dilation = _last(args[4] if with_dilation and len(args) > 4 else None, 1)
    return kernel, stride, padding, dilation


@contextmanager
def _module_names(model: nn.Module) -> Iterator[list[str]]:
    """Keep a stack of the dotted names of the modules currently running."""
    stack: list[str] = []

    def enter(name: str):  # noqa: ANN202
        return lambda module, args: stack.append(name) and None

    def leave(module: nn.Module, args: tuple, output: object) -> None:
        stack.pop()

    handles = []
    opaque: list[str] = []  # modules that report their ops as their own (e.g. escnn wrappers)
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in opaque):
            continue
        if getattr(module, "reports_as_leaf", False):
            opaque.append(name)
        handles.append(module.register_forward_pre_hook(enter(name)))
        handles.append(module.register_forward_hook(leave))
    try:
        yield stack
    finally:
        for h in handles:
            h.remove()


def _infer_in_channels(model: nn.Module) -> int:
    for module in model.modules():
        if isinstance(getattr(module, "in_channels", None), int):
            return module.in_channels
    raise ValueError("cannot infer the number of input channels; pass in_channels=")


def trace_window_ops(
    model: nn.Module, input_size: tuple[int, int], in_channels: int
) -> list[WindowOp]:
    """Run ``model`` on a meta tensor of shape ``(1, in_channels, H, W)``; list its window ops.

    The trace runs in eval mode (each module's mode is restored afterwards).
    """
    # Integer buffers (counters, index tensors such as escnn's) are cloned, not made meta:
    # code may read their values (slicing), and a clone keeps the model's own buffers unchanged.
    state = {
        name: t.to("meta") if t.is_floating_point() else t.clone()
        for name, t in [*model.named_parameters(), *model.named_buffers()]
    }
    dtype = next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
    x = torch.empty(1, in_channels, *input_size, device="meta", dtype=dtype)
    token = _TRACING.set(True)
    modes = {m: m.training for m in model.modules()}
    model.eval()  # same window ops; train-mode BatchNorm bookkeeping cannot run on meta tensors
    try:
        with _module_names(model) as stack, _WindowOpRecorder(stack) as recorder:
            torch.func.functional_call(model, state, (x,))
    finally:
        _TRACING.reset(token)
        for module, training in modes.items():
            module.training = training
    return recorder.ops


def _width_is_exact(model: nn.Module, height: int, width: int, in_channels: int) -> bool:
    try:
        ops = trace_window_ops(model, (height, width), in_channels)
    except RuntimeError:  # too small for the network
        return False
    return all(o.exact for o in ops)


def _nearest_exact_widths(
    model: nn.Module, ops: list[WindowOp], h: int, w: int, c: int, search: int
) -> tuple[int | None, int | None]:
    """Nearest exact widths below and above ``w`` within ``search`` pixels.

    Candidates must first pass the rule of the ops that see the raw input width (the stem),
    which needs no trace; each remaining candidate costs one meta trace.
    """
    stem = [o for o in ops if o.width == w and o.op != "pad"]

    def exact(width: int) -> bool:
        if width < 1 or any(not replace(o, width=width).exact for o in stem):
            return False
        return _width_is_exact(model, h, width, c)

    below = next((x for x in range(w - 1, w - search - 1, -1) if exact(x)), None)
    above = next((x for x in range(w + 1, w + search + 1) if exact(x)), None)
    return below, above


def flip_exactness(
    model: nn.Module,
    input_size: int | tuple[int, int],
    in_channels: int | None = None,
    search: int = 64,
) -> ExactnessReport:
    """Check the exactness rule for ``model`` at ``input_size`` (``W`` or ``(H, W)``).

    Works for any model whose forward takes one ``(B, C, H, W)`` tensor; nothing is computed
    (the trace runs on the ``meta`` device). When the size is inexact, the nearest exact widths
    within ``search`` pixels below and above are looked up (``search=0`` skips that).

    Raises ``ValueError`` when the model cannot run at that size.
    """
    h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    c = _infer_in_channels(model) if in_channels is None else in_channels
    try:
        ops = trace_window_ops(model, (h, w), c)
    except RuntimeError as err:
        raise ValueError(f"the model cannot run at input size {h}×{w}: {err}") from err
    report = ExactnessReport((h, w), ops)
    if not report.exact and search > 0:
        report.nearest_exact = _nearest_exact_widths(model, ops, h, w, c, search)
    return report


class InexactSizeWarner:
    """Forward pre-hook for flip models: warns once per input size that breaks the rule."""

    is_flip_hook = True

    def __init__(self) -> None:
        self.seen: set[tuple[int, int]] = set()

    @torch.compiler.disable
    def __call__(self, model: nn.Module, args: tuple) -> None:
        if _TRACING.get() or not args or not isinstance(args[0], Tensor) or args[0].dim() != 4:
            return
        size = (int(args[0].shape[-2]), int(args[0].shape[-1]))
        if size in self.seen:
            return
        self.seen.add(size)
        report = flip_exactness(model, size, in_channels=int(args[0].shape[1]))
        if not report.exact:
            warnings.warn(
                f"{type(model).__name__} is not exactly flip-equivariant here: {report}",
                FlipExactnessWarning,
                stacklevel=3,
            )


def warn_on_inexact_sizes(model: nn.Module) -> nn.Module:
    """Attach :class:`InexactSizeWarner` to ``model`` (returns ``model``)."""
    model.register_forward_pre_hook(InexactSizeWarner())
    return model
