"""When does a horizontal flip of the input commute exactly with a network?

A window op (conv or pool) with kernel ``k``, dilation ``d``, padding ``p`` and stride ``s`` on
an input of width ``W`` places its windows at ``-p, -p + s, …``; mirrored, they land on the same
grid only if the last window ends exactly at ``W + p``, that is if

    (W + 2p - d·(k - 1) - 1) % s == 0.

That op-by-op rule is sufficient for symmetric padding but not necessary once padding is
asymmetric (TF-"same" ``ZeroPad2d((0, 1, 0, 1))`` before a stride-2 conv): a padding column that
no window reads changes nothing. :func:`flip_exactness` therefore decides exactness by following
which input columns every output column reads (:mod:`gcnn.columns`): it traces any model on the
``meta`` device (no compute, no memory), and an op breaks exactness when the flipped twin's
columns stop being the mirror image of the model's. The verdict agrees with the numerical float64
check of ``twin(x) == model(x.flip(-1))`` layer by layer (:mod:`gcnn.exactness_check`); the
report names the breaking ops and the nearest exact widths.
"""

from __future__ import annotations

import contextvars
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from gcnn.columns import ColumnTracker, OpRecord
from gcnn.nn.module import FlipHook, FlipModule

aten = torch.ops.aten

_TRACING: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "gcnn_exactness_tracing", default=False
)


class FlipExactnessWarning(UserWarning):
    """A flip model runs at an input size where the flip does not commute exactly."""


WindowOp = OpRecord  # one recorded op (kept name: conv, pool, pad, or the op that breaks)


def describe(op: OpRecord) -> str:
    """One line naming ``op``, its parameters, the width it sees and why it breaks exactness."""
    where = op.module or "<root>"
    if op.op == "pad":
        return f"{where} (pad left={op.pad_left} ≠ right={op.pad_right}, width {op.width})"
    if not op.is_window:
        if not op.known:
            why = "an op gcnn.columns cannot follow, treated as breaking"
        elif op.input_padded:
            why = "reads a tensor padded on one side only"
        else:
            why = "not mirror-symmetric"
        return f"{where} ({op.op} on width {op.width}: {why})"
    params = f"{op.op} k={op.kernel} s={op.stride} p={op.padding}" + (
        f" d={op.dilation}" if op.dilation != 1 else ""
    )
    if op.remainder:
        why = f"remainder {op.remainder}"
    elif op.input_padded:
        why = "its windows read padding added on one side only"
    else:
        why = "its windows are not mirror-symmetric"
    return f"{where} ({params} on width {op.width}: {why})"


@dataclass
class ExactnessReport:
    """Whether ``model(x.flip(-1))`` can equal the flip of ``model(x)`` at one input size."""

    input_size: tuple[int, int]
    ops: list[WindowOp]  # every conv, pool and pad, and every op that breaks exactness
    nearest_exact: tuple[int | None, int | None] = (None, None)  # widths below / above
    strided_ops: list[WindowOp] = field(init=False)
    breaking_ops: list[WindowOp] = field(init=False)

    def __post_init__(self) -> None:
        self.strided_ops = [o for o in self.ops if o.op == "pad" or o.stride > 1]
        self.breaking_ops = [o for o in self.ops if o.breaks]

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
        broken = "; ".join(describe(o) for o in self.breaking_ops)
        return f"not flip-exact at {h}×{w}: {broken}. Nearest exact widths: {near}"


@contextmanager
def _module_names(model: nn.Module) -> Iterator[list[str]]:
    """Keep a stack of the dotted names of the modules currently running."""
    stack: list[str] = []

    def enter(name: str):  # noqa: ANN202
        return lambda module, args: stack.append(name) and None

    def leave(module: nn.Module, args: tuple, output: object) -> None:
        stack.pop()

    handles = []
    opaque: list[str] = []  # flip layers report their ops as their own (e.g. escnn wrappers)
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in opaque):
            continue
        if _is_flip_layer(module):
            opaque.append(name)
        handles.append(module.register_forward_pre_hook(enter(name)))
        handles.append(module.register_forward_hook(leave))
    try:
        yield stack
    finally:
        for h in handles:
            h.remove()


def _is_flip_layer(module: nn.Module) -> bool:
    """A :class:`~gcnn.nn.FlipModule` with no flip module below it: a layer, not a model. Its
    window ops are named after it, not after its children (the escnn module that an escnn
    layer wraps)."""
    return isinstance(module, FlipModule) and not any(
        isinstance(m, FlipModule) for m in module.modules() if m is not module
    )


def _infer_in_channels(model: nn.Module) -> int:
    for module in model.modules():
        if isinstance(getattr(module, "in_channels", None), int):
            return module.in_channels
    raise ValueError("cannot infer the number of input channels; pass in_channels=")


def trace_window_ops(
    model: nn.Module, input_size: tuple[int, int], in_channels: int
) -> list[WindowOp]:
    """Run ``model`` on a meta tensor ``(1, in_channels, H, W)``; list its ops that matter.

    Every conv, pool and pad is listed, and every op whose output is not the mirror image of the
    twin's although its inputs are (see :mod:`gcnn.columns`). The trace runs in eval mode
    (each module's mode is restored afterwards).
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
        with _module_names(model) as stack, ColumnTracker(stack) as tracker:
            tracker.track(x)
            torch.func.functional_call(model, state, (x,))
    finally:
        _TRACING.reset(token)
        for module, training in modes.items():
            module.training = training
    return tracker.ops


def _width_is_exact(model: nn.Module, height: int, width: int, in_channels: int) -> bool:
    try:
        ops = trace_window_ops(model, (height, width), in_channels)
    except RuntimeError:  # too small for the network
        return False
    return not any(o.breaks for o in ops)


def _stem_allows(op: WindowOp, width: int) -> bool:
    """The first op reads the raw input: the rule decides it alone (no trace needed)."""
    return (width + 2 * op.padding - op.dilation * (op.kernel - 1) - 1) % op.stride == 0


def _nearest_exact_widths(
    model: nn.Module, ops: list[WindowOp], h: int, w: int, c: int, search: int
) -> tuple[int | None, int | None]:
    """Nearest exact widths below and above ``w`` within ``search`` pixels.

    When the first recorded op is a conv or pool on the raw input, candidates must first pass
    its rule (no trace needed); each remaining candidate costs one meta trace.
    """
    stem = (
        ops[0] if ops and ops[0].is_window and ops[0].width == w and ops[0].input_aligned else None
    )

    def exact(width: int) -> bool:
        if width < 1 or (stem is not None and not _stem_allows(stem, width)):
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
    (the trace runs on the ``meta`` device). Exact means: the flipped twin's activations are the
    mirror images of the model's on mirrored inputs, at every op (zero columns added by padding
    at the borders aside), as decided by :mod:`gcnn.columns`. When the size is inexact, the
    nearest exact widths within ``search`` pixels below and above are looked up (``search=0``
    skips that).

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


class InexactSizeWarner(FlipHook):
    """Forward pre-hook for flip models: warns once per input size that breaks the rule
    (a :class:`~gcnn.nn.FlipHook`: exported plain models drop it)."""

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
