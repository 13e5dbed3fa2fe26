"""Does the flipped twin see the mirror image of what the model sees? Column terms, op by op.

For a model ``f`` and its flipped twin ``f̃`` (every conv filter mirrored along the width, every
spatially mixing Linear with mirrored input columns), exactness at an input size means that for
every tensor ``t`` the forward pass computes,

    t_twin(x) == flip(t_model(flip x))        (up to all-zero columns at the borders).

:class:`ColumnTracker` decides this without computing anything: during a forward pass on the
``meta`` device it gives every column of every tensor a *term*, an interned description of how
that column was computed from the input columns (for a conv: which input column each kernel tap
reads; for a pool: the multiset of columns in its window; for a pad: the constant). Both
networks are followed at once: the model on ``flip x`` (input column ``i`` is ``x[W-1-i]``) and
the twin on ``x`` (column ``j`` is ``x[j]``; a conv's tap ``t`` is the model's tap ``k-1-t``).
A tensor is exact when the twin's terms equal the model's terms mirrored, after stripping
columns that are known zeros (the padding added by ``F.pad`` / ``ZeroPad2d`` is a zero column:
padding that no window reads never matters, which the op-by-op rule cannot see).

An op *breaks* exactness when its inputs are exact and its output is not. Terms are equal only
when the computations are equal, so an "exact" verdict is a proof for any weights; a "not exact"
verdict holds for generic weights (a numerical float64 check with random weights agrees:
``gcnn.exactness_check``). Ops the tracker does not know (see :data:`UNKNOWN`) are treated as
breaking, never as exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

aten = torch.ops.aten

ZERO = 0  # the term of a column known to be all zeros

# ops whose output is 0 where every tracked input is 0 (any constant arguments)
_ZERO_PRESERVING = {
    "relu", "relu_", "hardtanh", "hardtanh_", "hardswish", "hardswish_", "silu", "silu_",
    "gelu", "leaky_relu", "leaky_relu_", "elu", "elu_", "tanh", "tanh_", "mul", "mul_", "div",
    "div_", "neg", "clone", "_to_copy", "detach", "alias", "contiguous", "add", "add_", "sub",
    "sub_", "mish", "mish_", "relu6", "max_pool2d_with_indices",
}  # fmt: skip

# ops that act on each column on its own (besides those tagged pointwise)
_PER_COLUMN = {
    "_native_batch_norm_legit_no_training", "_native_batch_norm_legit", "native_batch_norm",
    "batch_norm", "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_", "_to_copy",
    "clone", "detach", "alias", "lift_fresh", "gelu", "silu", "silu_", "mish", "mish_",
    "elu", "elu_", "leaky_relu", "leaky_relu_", "hardtanh", "hardtanh_", "softplus",
    "_prelu_kernel", "prelu", "relu6", "dropout", "native_dropout", "copy_", "copy",
}  # fmt: skip

_SHAPE_OPS = {
    "view", "_unsafe_view", "reshape", "unsqueeze", "unsqueeze_", "squeeze", "squeeze_",
    "expand", "flatten", "permute", "transpose", "t", "select", "unflatten",
}  # fmt: skip

_CONSTANT_LIKE = {
    "zeros_like", "ones_like", "empty_like", "full_like", "new_zeros", "new_ones", "new_empty",
    "new_full", "fill", "zero",
}  # fmt: skip
_SPLITS = {"split", "split_with_sizes", "chunk", "unbind", "unsafe_split", "tensor_split"}

_REDUCTIONS = {"mean", "sum", "amax", "amin", "max", "min", "var", "std", "logsumexp", "prod"}

#: op names the tracker treats as breaking exactness (filled while tracing)
UNKNOWN: set[str] = set()


@dataclass
class Columns:
    """Per-column terms of one tensor in both networks.

    ``kind``: ``"map"`` (the last axis is the width), ``"flat"`` (a ``(B, C·H·W)`` flattened
    map; ``twin``/``model`` still hold its ``W`` column terms) or ``"vector"`` (no width axis;
    one term each).
    """

    twin: tuple[int, ...]
    model: tuple[int, ...]
    kind: str = "map"

    @property
    def width(self) -> int:
        return len(self.twin)

    def aligned(self) -> bool:
        """Twin columns equal the mirrored model columns, zero border columns stripped."""
        if self.kind == "vector":
            return self.twin == self.model
        return _strip(self.twin) == _strip(self.model[::-1])


def _strip(terms: Sequence[int]) -> tuple[int, ...]:
    lo, hi = 0, len(terms)
    while lo < hi and terms[lo] == ZERO:
        lo += 1
    while hi > lo and terms[hi - 1] == ZERO:
        hi -= 1
    return tuple(terms[lo:hi])


@dataclass(frozen=True)
class OpRecord:
    """One op that reads columns of the input-derived tensors, as the tracker saw it."""

    index: int  # position in the dispatched op sequence
    module: str  # dotted path of the module running it ('' for the root)
    op: str  # 'conv', 'max_pool', 'avg_pool', 'pad', or an aten op name
    width: int  # width of its (first tracked) input
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    pad_left: int = 0
    pad_right: int = 0
    input_aligned: bool = True
    output_aligned: bool = True
    input_padded: bool = False  # its input had zero columns on one border only
    known: bool = True  # False: an op gcnn.columns cannot follow (treated as breaking)

    @property
    def is_window(self) -> bool:
        return self.op in ("conv", "max_pool", "avg_pool")

    @property
    def remainder(self) -> int:
        """The op-by-op rule ``(W + 2p − d(k−1) − 1) % s`` (``|left − right|`` for a pad)."""
        if self.op == "pad":
            return abs(self.pad_left - self.pad_right)
        if not self.is_window:
            return 0
        return (self.width + 2 * self.padding - self.dilation * (self.kernel - 1) - 1) % self.stride

    @property
    def breaks(self) -> bool:
        """This op makes exact inputs inexact (or, after an earlier break, breaks the rule)."""
        if self.input_aligned:
            return not self.output_aligned
        return self.is_window and self.remainder != 0


class _Interner:
    def __init__(self) -> None:
        self.ids: dict[Any, int] = {("zero",): ZERO}

    def __call__(self, term: Any) -> int:
        found = self.ids.get(term)
        if found is None:
            found = self.ids[term] = len(self.ids)
        return found


class ColumnTracker(TorchDispatchMode):
    """Follow column terms of the model on ``flip x`` and the twin on ``x`` (meta tensors).

    ``module_stack`` names the running module (kept by the caller with forward hooks).
    ``track(x)`` registers the input; every aten op on tracked tensors then gets a record in
    ``ops`` when it is a window op, a pad or an op that breaks alignment.
    """

    def __init__(self, module_stack: list[str]) -> None:
        super().__init__()
        self.module_stack = module_stack
        self.intern = _Interner()
        self.values: dict[int, Columns] = {}
        self.alive: list[Tensor] = []  # keeps ids unique while tracing
        self.ops: list[OpRecord] = []
        self.count = 0
        self.last_unknown = False  # the op being propagated is one the tracker cannot follow

    # ------------------------------------------------------------------ bookkeeping
    def track(self, x: Tensor) -> None:
        width = x.shape[-1]
        twin = tuple(self.intern(("x", j)) for j in range(width))
        self._set(x, Columns(twin, twin[::-1]))

    def _set(self, t: Tensor, cols: Columns) -> None:
        self.values[id(t)] = cols
        self.alive.append(t)

    def get(self, t: Any) -> Columns | None:
        return self.values.get(id(t)) if isinstance(t, Tensor) else None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.count += 1
        tracked = [t for t in tree_flatten((args, kwargs))[0] if self.get(t) is not None]
        if tracked:
            self._propagate(func, args, kwargs, out, tracked)
        return out

    # ------------------------------------------------------------------ propagation
    def _propagate(self, func, args, kwargs, out, tracked: list[Tensor]) -> None:  # noqa: ANN001
        name = func.overloadpacket.__name__
        if name in _SPLITS and isinstance(out, tuple | list):
            self._split(name, args, kwargs, out)
            return
        result = out[0] if isinstance(out, tuple | list) and out else out
        if not isinstance(result, Tensor):
            return
        if name in _CONSTANT_LIKE:
            width = result.shape[-1] if result.dim() >= 3 else 1
            const = (
                ZERO
                if name in ("zeros_like", "new_zeros", "zero")
                else self.intern(("c", self.count))
            )
            kind = "map" if result.dim() >= 3 else "vector"
            self._set(result, Columns((const,) * width, (const,) * width, kind))
            return
        inputs = [self.get(t) for t in tracked]
        aligned_in = all(c.aligned() for c in inputs if c is not None)
        first = self.get(args[0]) if args else None
        src = first if first is not None else inputs[0]
        record: dict[str, Any] = {}
        self.last_unknown = False
        cols = self._columns(func, name, args, kwargs, result, src, inputs, record)
        record["unknown"] = self.last_unknown
        self._set(result, cols)
        if isinstance(out, tuple | list) and name == "max_pool2d_with_indices":
            pass  # the indices are positions, not values: left untracked
        rec = OpRecord(
            index=self.count,
            module=self.module_stack[-1] if self.module_stack else "",
            op=record.pop("op", name),
            width=src.width if src.kind != "vector" else 1,
            input_aligned=aligned_in,
            output_aligned=cols.aligned(),
            input_padded=src.kind == "map" and _strip(src.twin) != src.twin,
            known=not record.pop("unknown", False),
            **record,
        )
        if rec.op in ("conv", "max_pool", "avg_pool", "pad") or rec.breaks:
            self.ops.append(rec)

    def _columns(
        self,
        func,  # noqa: ANN001
        name: str,
        args: tuple,
        kwargs: dict,
        out: Tensor,
        src: Columns,
        inputs: list[Columns | None],
        record: dict[str, Any],
    ) -> Columns:
        o = self.count
        if name == "convolution":
            return self._conv(o, args, out, src, record)
        if name in ("max_pool2d_with_indices", "max_pool2d", "avg_pool2d"):
            return self._pool(o, name, args, out, src, record)
        if name in ("_adaptive_avg_pool2d", "adaptive_max_pool2d", "adaptive_avg_pool2d"):
            return self._adaptive(o, name, out, src)
        if name == "constant_pad_nd":
            return self._constant_pad(args, out, src, record)
        if name in ("reflection_pad2d", "replication_pad2d", "reflection_pad1d"):
            return self._edge_pad(name, args, out, src, record)
        if name in ("upsample_nearest2d", "upsample_bilinear2d", "_upsample_nearest_exact2d"):
            return self._upsample(o, name, args, out, src)
        if name in ("addmm", "mm", "linear", "matmul", "bmm"):
            return self._matmul(o, name, args, src, out)
        if name == "cat":
            return self._cat(o, args, kwargs, out)
        if name == "slice":
            return self._slice(args, out, src)
        if name == "flip":
            dims = [d % out.dim() for d in args[1]]
            if src.kind == "map" and out.dim() - 1 in dims:
                return Columns(src.twin[::-1], src.model[::-1], "map")
            return src
        if name in _REDUCTIONS:
            return self._reduce(o, name, args, kwargs, out, src, inputs)
        if name in _SHAPE_OPS:
            return self._reshape(o, name, args, out, src)
        if torch.Tag.pointwise in func.tags or name in _PER_COLUMN or name.endswith("softmax"):
            if name.endswith("softmax") and args[1] % out.dim() == out.dim() - 1:
                return self._unknown(o, name, out, src)
            return self._pointwise(o, name, args, kwargs, out)
        return self._unknown(o, name, out, src)

    def _split(self, name: str, args: tuple, kwargs: dict, out: Sequence[Tensor]) -> None:
        src = self.get(args[0])
        assert src is not None
        ndim = args[0].dim()
        position = 1 if name == "unbind" else 2
        dim = args[position] if len(args) > position else kwargs.get("dim", 0)
        if src.kind == "map" and dim % ndim == ndim - 1:
            start = 0
            for part in out:
                w = part.shape[-1]
                self._set(part, Columns(src.twin[start : start + w], src.model[start : start + w]))
                start += w
            return
        for part in out:
            if isinstance(part, Tensor):
                self._set(part, src)

    def _unknown(self, o: int, name: str, out: Tensor, src: Columns) -> Columns:
        if src.kind == "vector" and out.dim() < 3:
            term = self.intern((o, "op", src.twin[0])), self.intern((o, "op", src.model[0]))
            return Columns((term[0],), (term[1],), "vector")
        UNKNOWN.add(name)
        self.last_unknown = True
        width = out.shape[-1] if out.dim() >= 3 else 1
        opaque = tuple(self.intern((o, "?", j)) for j in range(width))
        return Columns(opaque, opaque, "map" if out.dim() >= 3 else "vector")

    def _both(self, src: Columns, fn: Callable[[tuple[int, ...], bool], tuple[int, ...]]) -> tuple:
        return fn(src.twin, True), fn(src.model, False)

    def _conv(self, o: int, args: tuple, out: Tensor, src: Columns, record: dict) -> Columns:
        weight, bias, stride, padding, dilation, transposed = args[1:7]
        if transposed or src.kind != "map":
            return self._unknown(o, "conv_transpose" if transposed else "convolution", out, src)
        k, s, p, d = weight.shape[-1], stride[-1], padding[-1], dilation[-1]
        record.update(op="conv", kernel=k, stride=s, padding=p, dilation=d)
        width, n_out = src.width, out.shape[-1]
        padded = ZERO if bias is None else self.intern(("conv", o, ()))
        if k == 1:  # a per-column linear map (mirrors to itself): reuse the input's terms

            def pointwise(cols: tuple[int, ...], twin: bool) -> tuple[int, ...]:
                picked = (i * s - p for i in range(n_out))
                return tuple(
                    padded if not 0 <= q < width or cols[q] == ZERO else cols[q] for q in picked
                )

            return Columns(*self._both(src, pointwise))

        def conv(cols: tuple[int, ...], twin: bool) -> tuple[int, ...]:
            terms = []
            for i in range(n_out):
                taps = []
                for t in range(k):
                    pos = i * s - p + t * d
                    if 0 <= pos < width and cols[pos] != ZERO:
                        taps.append((k - 1 - t if twin else t, cols[pos]))
                if not taps and bias is None:
                    terms.append(ZERO)
                else:
                    terms.append(self.intern(("conv", o, tuple(sorted(taps)))))
            return tuple(terms)

        return Columns(*self._both(src, conv))

    def _pool(
        self, o: int, name: str, args: tuple, out: Tensor, src: Columns, record: dict
    ) -> Columns:
        kernel = _last(args[1], 1)
        stride = _last(args[2] if len(args) > 2 else None, kernel)
        padding = _last(args[3] if len(args) > 3 else None, 0)
        is_max = name.startswith("max")
        dilation = _last(args[4] if is_max and len(args) > 4 else None, 1)
        include_pad = bool(args[5]) if not is_max and len(args) > 5 else not is_max
        override = args[6] if not is_max and len(args) > 6 else None
        record.update(
            op="max_pool" if is_max else "avg_pool",
            kernel=kernel,
            stride=stride,
            padding=padding,
            dilation=dilation,
        )
        width, n_out = src.width, out.shape[-1]

        def pool(cols: tuple[int, ...], twin: bool) -> tuple[int, ...]:
            terms = []
            for i in range(n_out):
                start = i * stride - padding
                window = [start + t * dilation for t in range(kernel)]
                read = sorted(cols[q] for q in window if 0 <= q < width)
                if is_max:
                    zero = all(r == ZERO for r in read)
                    terms.append(ZERO if zero else self.intern(("max", o, tuple(read))))
                    continue
                end = min(start + kernel, width + padding)
                divisor = override or ((end - start) if include_pad else len(read))
                zero = all(r == ZERO for r in read)
                terms.append(ZERO if zero else self.intern(("avg", o, divisor, tuple(read))))
            return tuple(terms)

        return Columns(*self._both(src, pool))

    def _adaptive(self, o: int, name: str, out: Tensor, src: Columns) -> Columns:
        width, n_out = src.width, out.shape[-1]

        def adaptive(cols: tuple[int, ...], twin: bool) -> tuple[int, ...]:
            terms = []
            for i in range(n_out):
                lo, hi = (i * width) // n_out, -((-(i + 1) * width) // n_out)
                terms.append(self.intern((name, o, tuple(sorted(cols[lo:hi])))))
            return tuple(terms)

        return Columns(*self._both(src, adaptive))

    def _constant_pad(self, args: tuple, out: Tensor, src: Columns, record: dict) -> Columns:
        pad = list(args[1])
        value = args[2] if len(args) > 2 else 0
        left, right = (pad[0], pad[1]) if len(pad) >= 2 else (0, 0)
        record.update(op="pad", pad_left=left, pad_right=right)
        const = ZERO if value == 0 else self.intern(("const", float(value)))

        def padded(cols: tuple[int, ...], twin: bool) -> tuple[int, ...]:
            cols = cols[max(0, -left) : len(cols) - max(0, -right)]
            return (const,) * max(0, left) + cols + (const,) * max(0, right)

        return Columns(*self._both(src, padded))

    def _edge_pad(self, name: str, args: tuple, out: Tensor, src: Columns, record: dict) -> Columns:
        left, right = list(args[1])[:2]
        record.update(op="pad", pad_left=left, pad_right=right)

        def padded(cols: tuple[int, ...], twin: bool) -> tuple[int, ...]:
            if name.startswith("reflection"):
                return cols[left:0:-1] + cols + cols[-2 : -2 - right : -1]
            return (cols[0],) * left + cols + (cols[-1],) * right

        return Columns(*self._both(src, padded))

    def _upsample(self, o: int, name: str, args: tuple, out: Tensor, src: Columns) -> Columns:
        width, n_out = src.width, out.shape[-1]
        scales = [a for a in args[2:] if isinstance(a, float | int) and not isinstance(a, bool)]
        align = next((a for a in args[2:] if isinstance(a, bool)), False)
        scale = (1 / scales[-1]) if scales and scales[-1] else width / n_out

        def nearest(cols: tuple[int, ...], twin: bool) -> tuple[int, ...]:
            offset = 0.5 if name == "_upsample_nearest_exact2d" else 0.0
            return tuple(
                cols[min(int(math.floor((i + offset) * scale)), width - 1)] for i in range(n_out)
            )

        def bilinear(cols: tuple[int, ...], twin: bool) -> tuple[int, ...]:
            terms = []
            for i in range(n_out):
                if align:
                    x = i * (width - 1) / (n_out - 1) if n_out > 1 else 0.0
                else:
                    x = max((i + 0.5) * scale - 0.5, 0.0)
                lo = min(int(x), width - 1)
                hi = min(lo + 1, width - 1)
                lam = round(x - lo, 9)
                pairs = tuple(sorted(((round(1 - lam, 9), cols[lo]), (lam, cols[hi]))))
                terms.append(self.intern(("lerp", o, pairs)))
            return tuple(terms)

        return Columns(*self._both(src, bilinear if "bilinear" in name else nearest))

    def _matmul(self, o: int, name: str, args: tuple, src: Columns, out: Tensor) -> Columns:
        data = [a for a in args if self.get(a) is not None]
        if len(data) != 1 or src.kind == "map":
            return self._unknown(o, name, out, src)
        if src.kind == "vector":
            return Columns(
                (self.intern(("linear", o, src.twin[0])),),
                (self.intern(("linear", o, src.model[0])),),
                "vector",
            )
        width = src.width  # a spatial linear: the twin reads column j with weight column W-1-j

        def linear(cols: tuple[int, ...], twin: bool) -> tuple[int, ...]:
            taps = sorted((width - 1 - j if twin else j, c) for j, c in enumerate(cols))
            return (self.intern(("linear", o, tuple(taps))),)

        twin, model = self._both(src, linear)
        return Columns(twin, model, "vector")

    def _cat(self, o: int, args: tuple, kwargs: dict, out: Tensor) -> Columns:
        tensors = args[0]
        dim = (args[1] if len(args) > 1 else kwargs.get("dim", 0)) % out.dim()
        parts = []
        for n, t in enumerate(tensors):
            cols = self.get(t)
            if cols is None:  # a constant tensor: the same columns in both networks
                w = t.shape[-1] if t.dim() >= 3 else 1
                const = tuple(self.intern(("const", o, n, j)) for j in range(w))
                cols = Columns(const, const, "map" if t.dim() >= 3 else "vector")
            parts.append(cols)
        if out.dim() >= 3 and dim == out.dim() - 1:
            if any(p.kind != "map" for p in parts):
                return self._unknown(o, "cat", out, parts[0])
            twin = tuple(c for p in parts for c in p.twin)
            model = tuple(c for p in parts for c in p.model)
            return Columns(twin, model, "map")
        kind = parts[0].kind
        width = max(p.width for p in parts)

        def at(p: Columns, j: int, twin: bool) -> int:
            cols = p.twin if twin else p.model
            return cols[j] if len(cols) > 1 else cols[0]

        twin = tuple(
            self.intern(("cat", o, tuple(at(p, j, True) for p in parts))) for j in range(width)
        )
        model = tuple(
            self.intern(("cat", o, tuple(at(p, j, False) for p in parts))) for j in range(width)
        )
        return Columns(twin, model, kind)

    def _slice(self, args: tuple, out: Tensor, src: Columns) -> Columns:
        dim = (args[1] if len(args) > 1 else 0) % max(out.dim(), 1)
        if src.kind != "map" or dim != out.dim() - 1:
            return src
        start = args[2] if len(args) > 2 and args[2] is not None else 0
        end = args[3] if len(args) > 3 and args[3] is not None else src.width
        step = args[4] if len(args) > 4 else 1
        cut = slice(*slice(start, end, step).indices(src.width))
        return Columns(src.twin[cut], src.model[cut], "map")

    def _reduce(
        self,
        o: int,
        name: str,
        args: tuple,
        kwargs: dict,
        out: Tensor,
        src: Columns,
        inputs: list[Columns | None],
    ) -> Columns:
        ndim = len(args[0].shape)
        dims = args[1] if len(args) > 1 else kwargs.get("dim")
        if isinstance(dims, int):
            dims = [dims]
        dims = list(range(ndim)) if dims is None or dims == [] else [d % ndim for d in dims]
        if src.kind != "map" or ndim - 1 not in dims:
            return self._pointwise(o, name, args, kwargs, out)

        def reduce(cols: tuple[int, ...], twin: bool) -> tuple[int, ...]:
            return (self.intern((name, o, tuple(sorted(cols)))),)

        twin, model = self._both(src, reduce)
        return Columns(twin, model, "map" if out.dim() >= 3 else "vector")

    def _reshape(self, o: int, name: str, args: tuple, out: Tensor, src: Columns) -> Columns:
        before = tuple(args[0].shape)
        after = tuple(out.shape)
        if src.kind == "vector":
            if len(after) < 3:
                return src
            if after[-1] == 1:  # (B, C) → (B, C, 1, 1): a map one column wide
                return Columns(src.twin, src.model, "map")
            return self._unknown(o, name, out, src)
        width = src.width
        if src.kind == "flat":
            if len(after) == 2 and after == before:
                return src
            return self._unknown(o, name, out, src)
        # a map
        if name in ("permute", "transpose", "t"):
            dims = list(range(len(before)))
            if name == "permute":
                dims = [d % len(before) for d in args[1]]
            elif name == "transpose":
                a, b = args[1] % len(before), args[2] % len(before)
                dims[a], dims[b] = dims[b], dims[a]
            if dims[-1] == len(before) - 1 and len(after) >= 3:
                return src
            return self._unknown(o, name, out, src)
        if name == "expand" and len(after) >= 3 and width == 1 and after[-1] > 1:
            return Columns(src.twin * after[-1], src.model * after[-1], "map")
        if len(after) >= 3 and after[-1] == width and math.prod(after) == math.prod(before):
            return src
        if len(after) >= 3 and after[-1] == width and name in ("expand", "select"):
            return src
        if len(after) <= 2 and width == 1:
            return Columns(src.twin, src.model, "vector")
        if len(after) == 2 and len(before) == 4 and math.prod(after) == math.prod(before):
            return Columns(src.twin, src.model, "flat")
        return self._unknown(o, name, out, src)

    def _pointwise(self, o: int, name: str, args: tuple, kwargs: dict, out: Tensor) -> Columns:
        flat = tree_flatten((args, kwargs))[0]
        data = [self.get(a) for a in flat]
        data = [d for d in data if d is not None]
        for n, a in enumerate(flat):  # a constant that differs along the width (a positional
            # embedding): its column j enters column j of the output in both networks
            if isinstance(a, Tensor) and self.get(a) is None and a.dim() >= 3 and a.shape[-1] > 1:
                const = tuple(self.intern(("const", o, n, j)) for j in range(a.shape[-1]))
                data.append(Columns(const, const, "map"))
        kinds = {d.kind for d in data}
        kind = "map" if "map" in kinds else ("flat" if "flat" in kinds else "vector")
        width = max(d.width for d in data)
        zero_preserving = name in _ZERO_PRESERVING
        if len(data) == 1 and data[0].kind == kind:
            # one input, the same function on every column (and in both networks): the output
            # columns are equal exactly where the input columns are, so the input's terms serve
            # (a zero column stays zero only for zero-preserving ops)
            zero = ZERO if zero_preserving else self.intern(("pw", o, ZERO))
            only = data[0]
            twin = tuple(zero if c == ZERO else c for c in only.twin)
            model = tuple(zero if c == ZERO else c for c in only.model)
            return Columns(twin, model, kind)

        def column(j: int, twin: bool) -> int:
            terms = []
            for d in data:
                cols = d.twin if twin else d.model
                terms.append(cols[j] if len(cols) > 1 else cols[0])
            if zero_preserving and all(t == ZERO for t in terms):
                return ZERO
            return self.intern(("pw", o, tuple(terms)))

        twin = tuple(column(j, True) for j in range(width))
        model = tuple(column(j, False) for j in range(width))
        return Columns(twin, model, kind)


def _last(values: Any, default: int) -> int:
    if values is None:
        return default
    if isinstance(values, int):
        return values
    values = list(values)
    return int(values[-1]) if values else default
