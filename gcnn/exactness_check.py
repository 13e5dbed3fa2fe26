"""The numerical ground truth of exactness: ``twin(x) == model(x.flip(-1))`` op by op, in float64.

:func:`numerical_flip_check` runs the model on ``flip(x)`` and its flipped twin on ``x`` and
compares the output of every aten op that depends on the input, in the same order:

* maps ``(…, W)``: the twin's output against the model's output mirrored along the width, after
  stripping all-zero columns at both borders (padding that no window reads is no error);
* vectors (a Linear's ``(B, F)`` output, pooled features): directly;
* flattened maps (the ``(B, C·H·W)`` view before a spatial Linear) are skipped: the Linear after
  them is compared.

:func:`gcnn.flip_exactness` must agree with it; the tests check that on many architectures and
widths. Use it to certify a verdict on a model of your own (it costs two forward passes and
keeps every activation of the first in memory: use a small batch).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from gcnn.exactness import _module_names

_RESHAPES = {"view", "_unsafe_view", "reshape", "flatten", "squeeze", "unsqueeze", "expand"}


@dataclass(frozen=True)
class OpError:
    """One op's relative error ``‖twin − flip(model)‖ / ‖model‖`` (``inf``: shapes differ)."""

    index: int
    module: str
    op: str
    error: float


@dataclass
class NumericalReport:
    """Per-op errors of one numerical check; ``exact`` when every error is ≤ ``tolerance``."""

    errors: list[OpError] = field(default_factory=list)
    tolerance: float = 1e-9

    @property
    def breaking(self) -> list[OpError]:
        return [e for e in self.errors if e.error > self.tolerance]

    @property
    def exact(self) -> bool:
        return not self.breaking

    @property
    def max_error(self) -> float:
        return max((e.error for e in self.errors), default=0.0)


class _Recorder(TorchDispatchMode):
    """Records (index, module, op, output) of every op whose inputs depend on ``x``."""

    def __init__(self, x: Tensor, stack: list[str]) -> None:
        super().__init__()
        self.derived = {id(x)}
        self.alive = [x]
        self.stack = stack
        self.outputs: list[tuple[int, str, str, Tensor]] = []
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.count += 1
        inputs = tree_flatten((args, kwargs))[0]
        if any(isinstance(t, Tensor) and id(t) in self.derived for t in inputs):
            outs = [t for t in tree_flatten(out)[0] if isinstance(t, Tensor)]
            for t in outs:
                self.derived.add(id(t))
                self.alive.append(t)
            name = func.overloadpacket.__name__
            first = outs[0] if outs else None
            if first is not None and first.is_floating_point():
                where = self.stack[-1] if self.stack else ""
                self.outputs.append((self.count, where, name, first.detach().clone()))
        return out


def _strip(t: Tensor) -> Tensor:
    """``t`` without its all-zero columns (last axis) at both borders."""
    nonzero = (t != 0).flatten(0, -2).any(0) if t.dim() > 1 else t != 0
    idx = nonzero.nonzero().flatten()
    if idx.numel() == 0:
        return t[..., :0]
    return t[..., int(idx[0]) : int(idx[-1]) + 1]


def _run(model: nn.Module, x: Tensor) -> list[tuple[int, str, str, Tensor]]:
    with torch.no_grad(), _module_names(model) as stack, _Recorder(x, stack) as rec:
        model(x)
    return rec.outputs


def numerical_flip_check(
    model: nn.Module,
    x: Tensor,
    twin: nn.Module | None = None,
    tolerance: float = 1e-9,
) -> NumericalReport:
    """Compare ``twin`` on ``x`` with ``model`` on ``x.flip(-1)`` at every op (see module doc).

    ``model`` should be float64 and in eval mode, ``x`` ``(B, C, H, W)`` float64. ``twin``
    defaults to :func:`gcnn.analysis.flipped_twin` of ``model``.
    """
    if twin is None:
        from gcnn.analysis.graph import flipped_twin

        twin = flipped_twin(model, example_input=x)
    reference = _run(model, x.flip(-1))
    mirrored = _run(twin, x)
    report = NumericalReport(tolerance=tolerance)
    for (index, module, op, a), (_, _, op_b, b) in zip(reference, mirrored, strict=False):
        if op != op_b:
            report.errors.append(OpError(index, module, f"{op}≠{op_b}", float("inf")))
            break
        if a.dim() == 2 and op in _RESHAPES:
            continue  # a flattened map: compared at the Linear that reads it
        if a.dim() >= 3:
            a, b = _strip(a.flip(-1)), _strip(b)
        if a.shape != b.shape:
            error = float("inf")
        else:
            scale = a.abs().max().clamp_min(1e-300)
            error = float((a - b).abs().max() / scale) if a.numel() else 0.0
        report.errors.append(OpError(index, module, op, error))
    return report
