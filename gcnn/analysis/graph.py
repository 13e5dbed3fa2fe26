"""Permutation groups of a CNN, permuting a model, and its flipped twin.

A *permutation group* is a set of channels that must share one permutation for the network's
function to stay unchanged: a conv's output channels together with the BatchNorm after it and
the input axis of every layer that reads them; all the tensors added into one residual stream;
a squeeze-excitation gate and the features it scales. :func:`analyse_graph` finds them
automatically with ``torch.fx``: it traces the model, propagates shapes, gives every tensor a
*channel layout* (a list of segments, each a slice of one channel space) and merges spaces
with union-find wherever two tensors must carry the same channels (``+``, ``*``). When a tensor
on one space meets a concatenation (``conv(x) + cat([a, b])``), the space is split at the
concatenation's boundaries first. Each group lists its :class:`Slot` s, every state-dict tensor
axis the permutation acts on, so :func:`permute_model` needs nothing but the state dict.

The graph input (image channels) and output (logits) are fixed: groups tied to them are not
permutable and not listed. Neither are groups that no tensor carries on its own (possible only
after splits); their channels are simply left in place.

The *flipped twin* (:func:`flipped_twin`) mirrors every conv filter along the width and the
input columns of every spatially mixing linear layer. At an input size where the flip commutes
with every strided op (see :func:`gcnn.flip_exactness`), ``twin(x) == model(x.flip(-1))``.

Models built from gcnn's flip layers (``vgg11_flip``, ``resnet50_flip``) must be exported to
plain torch first: analyse ``model.export()``. Their state dicts store free weights, not the
full conv weights the permutations act on, so these functions refuse them with a message
saying so.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import math
import operator
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.fx.passes.shape_prop import ShapeProp
from torchvision.ops import StochasticDepth, stochastic_depth

from gcnn.errors import GcnnError

__all__ = [
    "ActivationProbe",
    "ModelGraph",
    "PermGroup",
    "Slot",
    "UnsupportedGraphError",
    "analyse_graph",
    "flipped_twin",
    "permute_model",
    "random_permutations",
]

F = nn.functional


class UnsupportedGraphError(GcnnError, ValueError):
    """The model contains an op whose effect on channel permutations is unknown."""


@dataclass(frozen=True)
class Slot:
    """Where a group's permutation acts in one state-dict tensor.

    The group covers indices ``[offset, offset + size * inner)`` of axis ``axis`` of the tensor
    ``key``; channel ``c`` of the group owns indices ``offset + c*inner … offset + (c+1)*inner - 1``
    (``inner = H·W`` for a Linear reading a flattened ``C×H×W`` map).
    """

    key: str  # state-dict key, e.g. "features.0.weight", "bn1.running_mean", "fc.weight"
    axis: int  # axis of that tensor the permutation acts on
    offset: int = 0  # first index on that axis covered by the group (torch.cat segments)
    inner: int = 1  # consecutive indices per channel (Linear after flatten: inner = H·W)


@dataclass
class PermGroup:
    """Channels that share one permutation.

    ``name``: the producing module (``"features.0"``) when one conv/linear creates the channels,
    else the creators joined by ``+`` (``"conv1+layer1.0.conv2+layer1.1.conv2"`` for a residual
    stream; with more than three creators the middle ones are elided as ``…``; parts of a split
    space that would share a name get ``#0``, ``#1``, … appended).
    ``slots``: every tensor axis the permutation acts on (producers' outputs and consumers'
    inputs). ``probe``: the fx node whose output ``(B, size, *spatial)`` or ``(B, size)`` is
    the last one in topological order that carries exactly this group's channels in order.
    ``producers``: modules with parameters on this group's channels as their outputs (the
    creating conv/linear layers, depthwise convs, BatchNorms), in topological order; after a
    ``torch.cat`` a BatchNorm covers several groups (its slots carry the offsets).
    ``consumers``: modules that read this group's channels as (part of) their input.
    ``nodes``: every fx node whose output carries exactly this group (``probe`` is the last).
    """

    name: str
    size: int
    slots: list[Slot]
    probe: str
    producers: list[str]
    consumers: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)


@dataclass
class ModelGraph:
    """The permutation groups of a traced model (see :func:`analyse_graph`)."""

    groups: list[PermGroup]  # permutable groups in topological order
    spatial_linears: dict[str, tuple[int, int, int]]  # Linear name -> (C, H, W) it reads, H·W > 1
    graph_module: fx.GraphModule  # the traced model (specialised to the example input's size)
    conv_weights: list[str] = field(default_factory=list)  # every conv weight's state-dict key

    def group(self, name: str) -> PermGroup:
        """The group called ``name`` (``KeyError`` listing the names otherwise)."""
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(f"no group {name!r}; groups: {[g.name for g in self.groups]}")

    def group_of(self, module: str) -> PermGroup | None:
        """The first group whose producers include ``module`` (``None`` if its outputs are
        fixed). A BatchNorm after a ``torch.cat`` belongs to several: see :meth:`groups_of`."""
        return next((g for g in self.groups if module in g.producers), None)

    def groups_of(self, module: str) -> list[PermGroup]:
        """Every group whose producers include ``module``, in topological order."""
        return [g for g in self.groups if module in g.producers]

    def slots_of(self, key: str) -> list[tuple[PermGroup, Slot]]:
        """Every ``(group, slot)`` acting on the state-dict tensor ``key`` (e.g. a conv weight:
        its output group on axis 0, its input group(s) on axis 1), for weight matching."""
        return [(g, s) for g in self.groups for s in g.slots if s.key == key]

    def __len__(self) -> int:
        return len(self.groups)


# --------------------------------------------------------------------------- tracing


class _ConcreteProxy(fx.Proxy):
    """A proxy that also iterates like its concrete value (tuples of tensors)."""

    def __iter__(self) -> Iterator[Any]:
        value = self.tracer.values.get(self.node)  # type: ignore[attr-defined]
        if isinstance(value, tuple | list):
            return iter([self[i] for i in range(len(value))])
        return super().__iter__()

    def __getattr__(self, k: str) -> Any:
        value = self.tracer.values.get(self.node)  # type: ignore[attr-defined]
        attr = getattr(value, k, None) if value is not None else None
        if attr is not None and not callable(attr) and not _holds_tensor(attr):
            return attr  # shape, ndim, dtype, device: concrete
        return super().__getattr__(k)

    def __len__(self) -> int:
        value = self.tracer.values.get(self.node)  # type: ignore[attr-defined]
        if isinstance(value, tuple | list):
            return len(value)
        raise fx.proxy.TraceError(f"len() of {self.node.name}: not a sequence")


class _Tracer(fx.Tracer):
    """fx tracer that runs the model on the example input while it traces.

    Every node's concrete value is computed as the node is created, so shape arithmetic and
    control flow on shapes (``if x.shape[-1] < k``, TF-"same" padding computed from
    ``x.size()``) see plain integers and are specialised to the example's size: the graph is
    valid for that input size. Values that are not tensors (sizes, flags) become constants;
    control flow on tensor *values* still fails to trace. torchvision's ``StochasticDepth`` is
    kept as a leaf.
    """

    def __init__(self, example: Tensor) -> None:
        super().__init__()
        self.example = example
        self.values: dict[fx.Node, Any] = {}
        self.placeholders = 0
        self.evaluating = False  # running a leaf module eagerly: no nodes, plain attributes

    def call_module(
        self, m: nn.Module, forward: Callable[..., Any], args: tuple, kwargs: dict
    ) -> Any:
        if self.evaluating:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if self.evaluating:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, StochasticDepth) or super().is_leaf_module(m, module_qualified_name)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ConcreteProxy(node, self)

    def _value(self, arg: Any) -> Any:
        if isinstance(arg, fx.proxy.Attribute):
            return getattr(self._value(arg.root), arg.attr)
        if isinstance(arg, fx.Proxy):
            return self.values[arg.node]
        if isinstance(arg, tuple | list):
            return type(arg)(self._value(a) for a in arg)
        if isinstance(arg, dict):
            return {k: self._value(v) for k, v in arg.items()}
        if isinstance(arg, slice):
            return slice(self._value(arg.start), self._value(arg.stop), self._value(arg.step))
        return arg

    def _evaluate(self, kind: str, target: Any, args: tuple, kwargs: dict) -> Any:
        args, kwargs = self._value(args), self._value(kwargs)
        if kind == "placeholder":
            self.placeholders += 1
            return self.example if self.placeholders == 1 else (args[0] if args else None)
        self.evaluating = True
        try:
            return self._run(kind, target, args, kwargs)
        except Exception as err:  # the model itself fails on this input (too small, …)
            raise _ModelRunError(str(err)) from err
        finally:
            self.evaluating = False

    def _run(self, kind: str, target: Any, args: tuple, kwargs: dict) -> Any:
        if kind == "get_attr":
            return operator.attrgetter(target)(self.root)
        if kind == "call_module":
            return self.root.get_submodule(target)(*args, **kwargs)
        if kind == "call_method":
            return getattr(args[0], target)(*args[1:], **kwargs)
        if kind == "call_function":
            return target(*args, **kwargs)
        return None

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, *rest, **kw):  # noqa: ANN001, ANN201
        if kind == "output":
            return super().create_proxy(kind, target, args, kwargs, name, type_expr, *rest, **kw)
        value = self._evaluate(kind, target, args, kwargs)
        if kind != "placeholder" and not _holds_tensor(value):
            return value  # sizes, flags, dtypes: specialised to the example input
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, *rest, **kw)
        self.values[proxy.node] = value
        return proxy


class _ModelRunError(RuntimeError):
    """The model raised while the tracer ran it on the example input."""


def _holds_tensor(value: Any) -> bool:
    if isinstance(value, Tensor):
        return True
    if isinstance(value, tuple | list):
        return any(_holds_tensor(v) for v in value)
    return False


def _require_plain(model: nn.Module) -> None:
    """Refuse models with gcnn flip layers (hand-written or escnn): their state dict holds free
    weights."""
    from gcnn.nn.module import FlipModule

    flips = [(n, m) for n, m in model.named_modules() if isinstance(m, FlipModule)]
    if flips:
        name, m = next(((n, m) for n, m in flips if n), flips[0])  # a layer, else the model
        raise UnsupportedGraphError(
            f"module {name or '<root>'} is a gcnn flip layer ({type(m).__name__}); its state "
            "dict stores free weights, not the full tensors that permutations act on. "
            "Analyse the plain model instead: model.export()"
        )


def _trace(model: nn.Module, example_input: Tensor) -> fx.GraphModule:
    """Trace ``model`` on ``example_input`` in eval mode without gradients; shapes propagated.

    The caller's model, its modes and BatchNorm statistics are untouched.
    """
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            try:
                graph = _Tracer(example_input).trace(model)
            except _ModelRunError as err:  # not the graph's fault: the input does not fit
                shape = tuple(example_input.shape)
                raise RuntimeError(f"{type(model).__name__} cannot run on {shape}: {err}") from err
            except Exception as err:  # fx and the model's own code raise many kinds of errors
                raise UnsupportedGraphError(
                    f"torch.fx cannot trace {type(model).__name__}: {err}"
                ) from err
            gm = fx.GraphModule(model, graph, type(model).__name__)
            ShapeProp(gm).propagate(example_input)
    finally:
        for m, training in modes.items():
            m.train(training)
    return gm


# --------------------------------------------------------------------------- union-find


@dataclass
class _Layout:
    """Channel layout of one tensor: segments ``(space, length)`` along dim 1, ``inner`` each."""

    segments: list[tuple[int, int]]
    inner: int = 1

    @property
    def channels(self) -> int:
        return sum(n for _, n in self.segments)


_CONST = object()  # layout of get_attr tensors (constants)


class _Spaces:
    """Union-find over channel spaces; slots, creators, producers and consumers per space."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.fixed: list[bool] = []
        self.slots: list[list[Slot]] = []
        self.creators: list[list[str]] = []
        self.producers: list[list[str]] = []
        self.consumers: list[list[str]] = []
        self.split: dict[int, list[int]] = {}  # split root -> its parts, in channel order

    def new(self, size: int, creator: str | None = None, fixed: bool = False) -> int:
        sid = len(self.parent)
        self.parent.append(sid)
        self.size.append(size)
        self.fixed.append(fixed)
        self.slots.append([])
        self.creators.append([creator] if creator else [])
        self.producers.append([creator] if creator else [])
        self.consumers.append([])
        return sid

    def find(self, sid: int) -> int:
        while self.parent[sid] != sid:
            self.parent[sid] = self.parent[self.parent[sid]]
            sid = self.parent[sid]
        return sid

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        if a > b:
            a, b = b, a  # keep the earliest space as root: topological order of groups
        self.parent[b] = a
        self.fixed[a] = self.fixed[a] or self.fixed[b]
        for attr in ("slots", "creators", "producers", "consumers"):
            getattr(self, attr)[a].extend(getattr(self, attr)[b])
            getattr(self, attr)[b] = []

    def parts(self, sid: int) -> list[tuple[int, int]]:
        """The current spaces ``(root, length)`` that make up ``sid``, in channel order."""
        root = self.find(sid)
        if root not in self.split:
            return [(root, self.size[root])]
        return [p for part in self.split[root] for p in self.parts(part)]

    def split_at(self, sid: int, k: int) -> None:
        """Split the space of root ``sid`` into channels ``[0, k)`` and ``[k, size)``.

        Needed when a tensor on one space is added to a concatenation: each part then joins
        its own segment. Slots are split with the offsets of the second part shifted.
        """
        root = self.find(sid)
        lo = self.new(k, fixed=self.fixed[root])
        hi = self.new(self.size[root] - k, fixed=self.fixed[root])
        for part, shift in ((lo, 0), (hi, k)):
            self.slots[part] = [
                replace(s, offset=s.offset + shift * s.inner) for s in self.slots[root]
            ]
            for attr in ("creators", "producers", "consumers"):
                getattr(self, attr)[part] = list(getattr(self, attr)[root])
        for attr in ("slots", "creators", "producers", "consumers"):
            getattr(self, attr)[root] = []
        self.split[root] = [lo, hi]


# --------------------------------------------------------------------------- op tables

_POINTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.SiLU,
    nn.Sigmoid,
    nn.GELU,
    nn.Tanh,
    nn.LeakyReLU,
    nn.ELU,
    nn.Mish,
    nn.Softplus,
    nn.Hardtanh,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Upsample,
    nn.ZeroPad2d,
    nn.ConstantPad2d,
    nn.ReflectionPad2d,
    nn.ReplicationPad2d,
    nn.CircularPad2d,
    StochasticDepth,
)

_POINTWISE_FUNCTIONS: set[Callable[..., Any]] = {
    torch.relu,
    torch.relu_,
    torch.sigmoid,
    torch.tanh,
    torch.clamp,
    torch.clone,
    operator.neg,
    F.relu,
    F.relu_,
    F.relu6,
    F.hardswish,
    F.hardsigmoid,
    F.hardtanh,
    F.silu,
    F.gelu,
    F.elu,
    F.leaky_relu,
    F.mish,
    F.sigmoid,
    F.tanh,
    F.dropout,
    F.dropout2d,
    F.max_pool2d,
    F.avg_pool2d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
    F.interpolate,
    stochastic_depth,
}

_POINTWISE_METHODS = {
    "relu",
    "relu_",
    "sigmoid",
    "sigmoid_",
    "tanh",
    "tanh_",
    "clamp",
    "clamp_",
    "contiguous",
    "clone",
    "detach",
    "to",
    "float",
    "double",
    "half",
    "type",
}

#: functional forms of the parametrised layers: their weights must be module parameters
_CONV_FUNCTIONS: set[Callable[..., Any]] = {F.conv2d, torch.conv2d}
_LINEAR_FUNCTIONS: set[Callable[..., Any]] = {F.linear, torch._C._nn.linear}
_BATCHNORM_FUNCTIONS: set[Callable[..., Any]] = {F.batch_norm, torch.batch_norm}
_PAD_FUNCTIONS: set[Callable[..., Any]] = {F.pad, torch._C._nn.pad, torch.constant_pad_nd}

_BINARY_FUNCTIONS = {
    operator.add,
    operator.iadd,
    operator.sub,
    operator.isub,
    operator.mul,
    operator.imul,
    operator.truediv,
    operator.itruediv,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
}
_BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}
_RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}
_RESHAPE_METHODS = {"flatten", "view", "reshape", "squeeze", "unsqueeze"}
_REDUCE_FUNCTIONS = {torch.mean, torch.sum, torch.amax}
_REDUCE_METHODS = {"mean", "sum", "amax"}


def _target_name(node: fx.Node) -> str:
    t = node.target
    if isinstance(t, str):
        return t
    return getattr(t, "__qualname__", None) or getattr(t, "__name__", None) or str(t)


def _describe(node: fx.Node) -> str:
    return f"node {node.name} ({node.op} {_target_name(node)})"


class _Analyser:
    """One pass over the fx graph in topological order, assigning a layout to every tensor."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.spaces = _Spaces()
        self.layouts: dict[fx.Node, Any] = {}
        self.module_calls: dict[str, tuple[_Layout, _Layout]] = {}
        self.spatial_linears: dict[str, tuple[int, int, int]] = {}
        self.flat_hw: dict[fx.Node, tuple[int, int]] = {}  # flattened node -> (H, W)
        self.module_order: dict[str, int] = {}  # module -> position of its first call
        self.conv_weights: list[str] = []  # state-dict keys of every conv weight, in call order

    # ---- helpers
    def unsupported(self, node: fx.Node, why: str = "is not supported") -> UnsupportedGraphError:
        return UnsupportedGraphError(f"cannot find permutation groups: {_describe(node)} {why}")

    @staticmethod
    def shape(node: Any) -> tuple[int, ...] | None:
        if not isinstance(node, fx.Node):
            return None
        meta = node.meta.get("tensor_meta")
        shape = getattr(meta, "shape", None)
        return tuple(shape) if shape is not None else None

    def canonical(self, layout: _Layout) -> _Layout:
        """``layout`` in terms of the current (unsplit) spaces."""
        segments = [p for sid, _ in layout.segments for p in self.spaces.parts(sid)]
        return _Layout(segments, layout.inner)

    def layout_of(self, node: fx.Node, arg: Any) -> _Layout:
        layout = self.layouts.get(arg) if isinstance(arg, fx.Node) else None
        if not isinstance(layout, _Layout):
            raise self.unsupported(node, "reads a tensor with no known channel layout")
        return self.canonical(layout)

    def refine(self, layout: _Layout, bounds: set[int]) -> _Layout:
        """Split ``layout``'s spaces so that every channel position in ``bounds`` starts one."""
        start = 0
        for sid, n in self.canonical(layout).segments:
            for cut in sorted(b - start for b in bounds if start < b < start + n):
                for part, length in self.spaces.parts(sid):  # the part holding ``cut``
                    if cut < length:
                        self.spaces.split_at(part, cut)
                        break
                    cut -= length
            start += n
        return self.canonical(layout)

    def slots_on(self, layout: _Layout, key: str, axis: int, consumer: str | None = None) -> None:
        """Attach ``key``'s axis to every segment of ``layout``."""
        offset = 0
        for sid, n in self.canonical(layout).segments:
            root = self.spaces.find(sid)
            self.spaces.slots[root].append(Slot(key, axis, offset * layout.inner, layout.inner))
            if consumer is not None:
                self.spaces.consumers[root].append(consumer)
            offset += n

    def unite(self, node: fx.Node, a: _Layout, b: _Layout) -> _Layout:
        """Channel-wise union of two layouts with the same channel count (spaces are split
        where their segment boundaries differ, e.g. a conv output added to a concatenation)."""
        a, b = self.canonical(a), self.canonical(b)
        la, lb = [n for _, n in a.segments], [n for _, n in b.segments]
        if la != lb and sum(la) == sum(lb) and a.inner == b.inner:
            bounds = set(itertools.accumulate(la)) | set(itertools.accumulate(lb))
            a, b = self.refine(a, bounds), self.refine(b, bounds)
            la, lb = [n for _, n in a.segments], [n for _, n in b.segments]
        if la != lb or a.inner != b.inner:
            raise self.unsupported(
                node,
                f"combines tensors with different channel layouts ({la}×{a.inner} vs "
                f"{lb}×{b.inner})",
            )
        for (sa, _), (sb, _) in zip(a.segments, b.segments, strict=True):
            self.spaces.union(sa, sb)
        return a

    # ---- main loop
    def run(self) -> None:
        first_input = True
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                shape = self.shape(node)
                if shape is None or len(shape) < 2:
                    continue
                if not first_input:
                    raise self.unsupported(node, "is a second tensor input")
                first_input = False
                sid = self.spaces.new(shape[1], fixed=True)
                self.layouts[node] = _Layout([(sid, shape[1])])
            elif node.op == "output":
                for arg in _flat_nodes(node.args):
                    layout = self.layouts.get(arg)
                    if isinstance(layout, _Layout):
                        for sid, _ in self.canonical(layout).segments:
                            self.spaces.fixed[sid] = True
            elif node.op == "get_attr":
                self.layouts[node] = _CONST
            elif "tensor_meta" not in node.meta:
                continue  # sizes, dims, shape arithmetic: not tensors
            elif self.shape(node) is None:
                raise self.unsupported(node, "returns several tensors")
            elif node.op == "call_module":
                self.layouts[node] = self.call_module(node)
            elif node.op in ("call_function", "call_method"):
                self.layouts[node] = self.call_function(node)
            else:
                raise self.unsupported(node)

    def call_module(self, node: fx.Node) -> _Layout:
        name = str(node.target)
        m = self.modules[name]
        self.module_order.setdefault(name, len(self.module_order))
        if not node.args:
            raise self.unsupported(node, "has no input")
        x = self.layout_of(node, node.args[0])
        if isinstance(m, _POINTWISE_MODULES):
            return x
        if isinstance(m, nn.Flatten):
            return self.reshape(node, node.args[0])
        if not isinstance(m, nn.Conv2d | nn.BatchNorm2d | nn.BatchNorm1d | nn.Linear):
            raise self.unsupported(node, f"({type(m).__name__}) is not supported")
        keys = {n: f"{name}.{n}" if name else n for n, _ in m.named_parameters(recurse=False)}
        keys |= {
            n: f"{name}.{n}" if name else n
            for n, b in m.named_buffers(recurse=False)
            if b is not None and b.dim() > 0
        }
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            return self.once(node, name, x, lambda: self.batchnorm(name, keys, x))
        if isinstance(m, nn.Conv2d):
            self.conv_weights.append(keys["weight"])
            return self.once(node, name, x, lambda: self.conv(node, name, keys, x, m.groups))
        return self.once(node, name, x, lambda: self.linear(node, name, keys, x))

    def once(self, node: fx.Node, name: str, x: _Layout, build: Callable[[], _Layout]) -> _Layout:
        """``build()`` on the first call of layer ``name``; later calls reuse its channels."""
        if name in self.module_calls:  # a reused module: same channels on every call
            first_in, first_out = self.module_calls[name]
            self.unite(node, first_in, x)
            return first_out
        out = build()
        self.module_calls[name] = (x, out)
        return out

    def parameter_keys(self, node: fx.Node, kind: str, args: dict[str, Any]) -> dict[str, str]:
        """State-dict keys of a functional layer's tensor arguments (``get_attr`` nodes)."""
        keys = {}
        for role, arg in args.items():
            if arg is None:
                continue
            if not isinstance(arg, fx.Node) or arg.op != "get_attr":
                raise self.unsupported(
                    node,
                    f"({kind} whose {role} is computed, not a module parameter or buffer) is not "
                    "supported",
                )
            keys[role] = str(arg.target)
        return keys

    def functional(self, node: fx.Node) -> _Layout | None:
        """``F.conv2d`` / ``F.linear`` / ``F.batch_norm`` / ``F.pad`` calls, else ``None``."""
        t = node.target
        bound = _bind(node)
        if t in _PAD_FUNCTIONS:
            x = self.layout_of(node, bound.get("input", bound.get("self")))
            pad = list(bound.get("pad", ()))
            ndim = len(self.shape(node) or ())
            if ndim - len(pad) // 2 <= 1:
                raise self.unsupported(node, f"pads the channel axis (pad={pad})")
            return x
        if t in _CONV_FUNCTIONS:
            keys = self.parameter_keys(
                node, "conv2d", {"weight": bound["weight"], "bias": bound.get("bias")}
            )
            self.conv_weights.append(keys["weight"])
            name = keys["weight"].rpartition(".")[0]
            self.module_order.setdefault(name, len(self.module_order))
            x = self.layout_of(node, bound["input"])
            groups = int(bound.get("groups", 1))
            return self.once(node, name, x, lambda: self.conv(node, name, keys, x, groups))
        if t in _LINEAR_FUNCTIONS:
            keys = self.parameter_keys(
                node, "linear", {"weight": bound["weight"], "bias": bound.get("bias")}
            )
            name = keys["weight"].rpartition(".")[0]
            self.module_order.setdefault(name, len(self.module_order))
            x = self.layout_of(node, bound["input"])
            return self.once(node, name, x, lambda: self.linear(node, name, keys, x))
        if t in _BATCHNORM_FUNCTIONS:
            roles = ("weight", "bias", "running_mean", "running_var")
            keys = self.parameter_keys(node, "batch_norm", {r: bound.get(r) for r in roles})
            if not keys:
                return self.layout_of(node, bound["input"])  # no parameters: per-channel anyway
            name = next(iter(keys.values())).rpartition(".")[0]
            self.module_order.setdefault(name, len(self.module_order))
            x = self.layout_of(node, bound["input"])
            return self.once(node, name, x, lambda: self.batchnorm(name, keys, x))
        return None

    def batchnorm(self, name: str, keys: Mapping[str, str], x: _Layout) -> _Layout:
        for key in keys.values():
            self.slots_on(x, key, 0)
        for sid, _ in x.segments:
            self.spaces.producers[self.spaces.find(sid)].append(name)
        return x

    def conv(
        self, node: fx.Node, name: str, keys: Mapping[str, str], x: _Layout, groups: int
    ) -> _Layout:
        out_channels, in_per_group = self.gm.get_parameter(keys["weight"]).shape[:2]
        in_channels = in_per_group * groups
        if groups == 1:
            self.slots_on(x, keys["weight"], 1, consumer=name)
            sid = self.spaces.new(out_channels, creator=name)
            out = _Layout([(sid, out_channels)])
            for key in keys.values():
                self.slots_on(out, key, 0)
            return out
        if groups == in_channels == out_channels and x.inner == 1:  # depthwise
            for key in keys.values():
                self.slots_on(x, key, 0)
            for sid, _ in x.segments:
                self.spaces.producers[self.spaces.find(sid)].append(name)
                self.spaces.consumers[self.spaces.find(sid)].append(name)
            return x
        raise self.unsupported(
            node,
            f"(Conv2d with groups={groups}, {in_channels}→{out_channels}) is not "
            "supported: only groups=1 and depthwise convs",
        )

    def linear(self, node: fx.Node, name: str, keys: Mapping[str, str], x: _Layout) -> _Layout:
        in_shape = self.shape(node.args[0])
        if in_shape is None or len(in_shape) != 2:
            raise self.unsupported(node, f"(Linear on a tensor of shape {in_shape}) needs (B, C)")
        if x.inner > 1:
            self.spatial_linears[name] = (x.channels, *self.flat_hw[node.args[0]])
        out_features = self.gm.get_parameter(keys["weight"]).shape[0]
        self.slots_on(x, keys["weight"], 1, consumer=name)
        sid = self.spaces.new(out_features, creator=name)
        out = _Layout([(sid, out_features)])
        for key in keys.values():
            self.slots_on(out, key, 0)
        return out

    def call_function(self, node: fx.Node) -> Any:
        t = node.target
        method = node.op == "call_method"
        inputs = [self.layouts.get(a) for a in _flat_nodes((node.args, node.kwargs))]
        if inputs and all(layout is _CONST for layout in inputs):
            return _CONST  # arithmetic on parameters and buffers only (a computed weight)
        if (method and t in _POINTWISE_METHODS) or (not method and t in _POINTWISE_FUNCTIONS):
            return self.layout_of(node, node.args[0] if node.args else node.kwargs.get("input"))
        if (method and t in _BINARY_METHODS) or (not method and t in _BINARY_FUNCTIONS):
            return self.binary(node)
        if (method and t in _RESHAPE_METHODS) or (not method and t in _RESHAPE_FUNCTIONS):
            return self.reshape(node, node.args[0])
        if (method and t in _REDUCE_METHODS) or (not method and t in _REDUCE_FUNCTIONS):
            return self.reduce(node)
        if not method and t is torch.cat:
            return self.cat(node)
        if not method:
            out = self.functional(node)
            if out is not None:
                return out
        raise self.unsupported(node)

    def binary(self, node: fx.Node) -> _Layout:
        args = [*node.args[:2], *[node.kwargs[k] for k in ("other",) if k in node.kwargs]]
        tensors = []
        for a in args[:2]:
            layout = self.layouts.get(a) if isinstance(a, fx.Node) else None
            if isinstance(layout, _Layout):
                tensors.append((a, self.canonical(layout)))
            elif layout is _CONST:
                shape = self.shape(a) or ()
                if math.prod(shape) > 1:
                    raise self.unsupported(node, f"uses a constant tensor of shape {shape}")
        if not tensors:
            raise self.unsupported(node, "has no tensor input with a channel layout")
        if len(tensors) == 1:
            return tensors[0][1]
        (na, a), (nb, b) = tensors
        ca, cb = (self.shape(na) or (0, 0))[1], (self.shape(nb) or (0, 0))[1]
        if ca == 1 and cb > 1:  # broadcast along channels: one value for every channel
            return b
        if cb == 1 and ca > 1:
            return a
        return self.unite(node, a, b)

    def reshape(self, node: fx.Node, arg: Any) -> _Layout:
        x = self.layout_of(node, arg)
        before, after = self.shape(arg), self.shape(node)
        assert before is not None and after is not None
        rest_before, rest_after = math.prod(before[2:]), math.prod(after[2:])
        if len(after) >= 2 and after[:2] == before[:2] and rest_before == rest_after:
            if arg in self.flat_hw and len(after) == 2:
                self.flat_hw[node] = self.flat_hw[arg]
            return x  # only the spatial dims are reshaped
        if len(before) > 2 and after == (before[0], before[1] * rest_before):
            out = _Layout(x.segments, x.inner * rest_before)
            if rest_before > 1:
                if x.inner > 1 or len(before) != 4:
                    raise self.unsupported(node, f"flattens a {before} tensor")
                self.flat_hw[node] = (before[2], before[3])
            return out
        raise self.unsupported(node, f"reshapes {before} to {after}, mixing the channel axis")

    def reduce(self, node: fx.Node) -> _Layout:
        x = self.layout_of(node, node.args[0])
        ndim = len(self.shape(node.args[0]) or ())
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = [dims] if isinstance(dims, int) else list(dims or [])
        if not dims or any(d % ndim < 2 for d in dims):
            raise self.unsupported(node, "reduces over the batch or channel axis")
        return x

    def cat(self, node: fx.Node) -> _Layout:
        tensors = node.args[0] if node.args else node.kwargs["tensors"]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        layouts = [self.layout_of(node, t) for t in tensors]
        ndim = len(self.shape(node) or ())
        if dim % ndim != 1:
            out = layouts[0]
            for other in layouts[1:]:
                out = self.unite(node, out, other)
            return out
        if len({lay.inner for lay in layouts}) > 1:
            raise self.unsupported(node, "concatenates flattened maps of different sizes")
        return _Layout([s for lay in layouts for s in lay.segments], layouts[0].inner)

    # ---- result
    def topological(self, modules: list[str]) -> list[str]:
        """Unique module names in the order of their first call."""
        return sorted(dict.fromkeys(modules), key=lambda m: self.module_order.get(m, -1))

    def groups(self) -> list[PermGroup]:
        sp = self.spaces
        roots = {sp.find(s) for s in range(len(sp.parent))} - set(sp.split)
        nodes: dict[int, list[str]] = {r: [] for r in roots}
        first: dict[int, int] = {}
        for position, (node, layout) in enumerate(self.layouts.items()):
            if not isinstance(layout, _Layout) or node.op == "placeholder":
                continue
            layout = self.canonical(layout)
            shape = self.shape(node)
            if len(layout.segments) != 1 or layout.inner != 1 or shape is None or len(shape) < 2:
                continue
            root, size = layout.segments[0]
            if shape[1] == size:
                nodes[root].append(node.name)
                first.setdefault(root, position)
        out: list[PermGroup] = []
        for r in sorted(first, key=first.__getitem__):  # topological order of first appearance
            if sp.fixed[r]:
                continue
            creators = self.topological(sp.creators[r])
            if len(creators) <= 3:
                name = "+".join(creators)
            else:
                name = f"{creators[0]}+…+{creators[-1]}"
            out.append(
                PermGroup(
                    name=name or f"space{r}",
                    size=sp.size[r],
                    slots=list(dict.fromkeys(sp.slots[r])),
                    probe=nodes[r][-1],
                    producers=self.topological(sp.producers[r]),
                    consumers=self.topological(sp.consumers[r]),
                    nodes=nodes[r],
                )
            )
        names = [g.name for g in out]
        for i, (g, name) in enumerate(zip(out, names, strict=True)):
            if names.count(name) > 1:  # parts of a split space share their creators: number them
                g.name = f"{name}#{names[:i].count(name)}"
        return out


def _bind(node: fx.Node) -> dict[str, Any]:
    """A call_function node's arguments by parameter name (positional ones named too)."""
    try:
        schema = inspect.signature(node.target)  # type: ignore[arg-type]
        names = list(schema.parameters)
    except (TypeError, ValueError):  # builtins without a Python signature
        names = _BUILTIN_PARAMETERS.get(node.target, [])  # type: ignore[arg-type]
    bound = dict(zip(names, node.args, strict=False))
    bound.update(node.kwargs)
    return bound


_BUILTIN_PARAMETERS: dict[Any, list[str]] = {
    torch.conv2d: ["input", "weight", "bias", "stride", "padding", "dilation", "groups"],
    torch._C._nn.linear: ["input", "weight", "bias"],
    torch._C._nn.pad: ["input", "pad", "mode", "value"],
    torch.constant_pad_nd: ["input", "pad", "value"],
    torch.batch_norm: [
        "input", "weight", "bias", "running_mean", "running_var", "training", "momentum", "eps",
        "cudnn_enabled",
    ],
}  # fmt: skip


def _flat_nodes(args: Any) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg(args, lambda n: found.append(n) or n)
    return found


# --------------------------------------------------------------------------- public API


def analyse_graph(model: nn.Module, example_input: Tensor) -> ModelGraph:
    """Find the permutation groups of ``model`` on ``example_input`` ``(B, C, H, W)``.

    ``torch.fx`` traces the model (torchvision's StochasticDepth kept as a leaf), shape
    propagation runs it once in eval mode without gradients (the caller's model, its modes and
    BatchNorm statistics are untouched), and union-find merges the channel spaces that must
    share a permutation. Supported: ``Conv2d`` (``groups=1`` and depthwise), ``BatchNorm``,
    ``Linear`` (also after flattening a ``C×H×W`` map: ``spatial_linears``), pointwise
    activations, dropout, pooling, flattening, ``+``/``−``/``×``/``÷`` of tensors (residual
    streams, squeeze-excitation gates), ``torch.cat`` along channels, and spatial reductions.

    Raises :class:`UnsupportedGraphError` naming the first node it cannot handle (a reshape
    that mixes the channel axis, ``permute``, grouped convs, attention, …) and for models
    built from gcnn flip layers (analyse ``model.export()``).
    """
    _require_plain(model)
    gm = _trace(model, example_input)
    analyser = _Analyser(gm)
    analyser.run()
    return ModelGraph(
        analyser.groups(), analyser.spatial_linears, gm, list(dict.fromkeys(analyser.conv_weights))
    )


def _permutation_index(length: int, perm: Tensor, slot: Slot) -> Tensor:
    """Index along a slot's axis: indices outside the slot stay, inside follow ``perm``."""
    index = torch.arange(length)
    block = (perm[:, None] * slot.inner + torch.arange(slot.inner)).reshape(-1) + slot.offset
    index[slot.offset : slot.offset + block.numel()] = block
    return index


def permute_slot(tensor: Tensor, slot: Slot, perm: Tensor) -> Tensor:
    """``tensor`` with the entries of ``slot`` along ``slot.axis`` reordered: new channel ``i``
    = old channel ``perm[i]`` (a new tensor; ``tensor`` is untouched)."""
    index = _permutation_index(tensor.shape[slot.axis], perm.long().cpu(), slot)
    return tensor.index_select(slot.axis, index.to(tensor.device))


def _check_perm(perm: Tensor, group: PermGroup) -> Tensor:
    perm = torch.as_tensor(perm).long().cpu()
    if perm.shape != (group.size,) or not torch.equal(perm.sort().values, torch.arange(group.size)):
        raise ValueError(
            f"perms[{group.name!r}] must be a permutation of range({group.size}), got shape "
            f"{tuple(perm.shape)}"
        )
    return perm


def permute_model(model: nn.Module, graph: ModelGraph, perms: Mapping[str, Tensor]) -> nn.Module:
    """A deep copy of ``model`` with every group in ``perms`` permuted.

    New channel ``i`` of group ``g`` is old channel ``perms[g][i]``: along every slot of ``g``,
    ``t ← t.index_select(axis, index)`` on the slot's indices (``inner`` consecutive indices per
    channel). Groups not in ``perms`` are left alone; unknown names raise ``KeyError``. The
    permuted model computes the same function (exactly up to float rounding). Works on any model
    of the same architecture as the one ``graph`` was built from; the caller's model is
    untouched.
    """
    groups = {g.name: g for g in graph.groups}
    unknown = sorted(set(perms) - set(groups))
    if unknown:
        raise KeyError(f"unknown groups {unknown}; groups: {list(groups)}")
    out = copy.deepcopy(model)
    state = out.state_dict(keep_vars=True)
    with torch.no_grad():
        for name, perm in perms.items():
            group = groups[name]
            perm = _check_perm(perm, group)
            for slot in group.slots:
                state[slot.key].copy_(permute_slot(state[slot.key], slot, perm))
    return out


def random_permutations(
    graph: ModelGraph, generator: torch.Generator | None = None
) -> dict[str, Tensor]:
    """One uniformly random permutation ``(size,)`` per group of ``graph``."""
    return {g.name: torch.randperm(g.size, generator=generator) for g in graph.groups}


def flipped_twin(
    model: nn.Module,
    graph: ModelGraph | None = None,
    example_input: Tensor | None = None,
    mirror_linears: bool = True,
) -> nn.Module:
    """A deep copy of ``model`` that computes ``model`` on mirrored images.

    Every ``Conv2d`` weight ``(out, in/groups, kh, kw)`` is mirrored along the width
    (``weight.flip(-1)``), and every spatially mixing ``Linear`` (one reading a flattened
    ``C×H×W`` map with ``H·W > 1``, listed in ``graph.spatial_linears``) has its input columns
    mirrored: its weight viewed as ``(out, C, H, W)`` is flipped along ``W``. At an input size
    where the model is flip-exact (:func:`gcnn.flip_exactness`), ``twin(x) == model(x.flip(-1))``
    to float precision. ``graph`` (or ``example_input`` to build one) finds the spatial linears;
    a model without ``Linear`` layers needs neither. ``mirror_linears=False`` skips the linear
    columns (for tests and ablations only: the result is then no twin when a spatial linear
    exists).
    """
    _require_plain(model)
    if graph is None and any(isinstance(m, nn.Linear) for m in model.modules()):
        if example_input is None:
            raise ValueError(
                "flipped_twin needs graph= or example_input= to find the Linear layers that "
                "read flattened spatial maps"
            )
        graph = analyse_graph(model, example_input)
    twin = copy.deepcopy(model)
    spatial = graph.spatial_linears if graph is not None and mirror_linears else {}
    state = twin.state_dict(keep_vars=True)
    convs = {
        f"{n}.weight" if n else "weight"
        for n, m in twin.named_modules()
        if isinstance(m, nn.Conv2d)
    }
    if graph is not None:
        convs |= set(graph.conv_weights)  # functional convs on module parameters too
    with torch.no_grad():
        for weight in {id(state[k]): state[k] for k in convs}.values():  # tied weights once
            weight.copy_(weight.flip(-1))
        for name, (c, h, w) in spatial.items():
            weight = state[f"{name}.weight" if name else "weight"]
            mirrored = weight.view(weight.shape[0], c, h, w).flip(-1)
            weight.copy_(mirrored.reshape(weight.shape[0], c * h * w))
    return twin


class ActivationProbe(nn.Module):
    """``model`` re-traced so that ``forward(x)`` also returns every group's probe activation.

    ``forward(x) -> (model(x), {group.name: activation})`` where each activation is the output
    of the group's probe node, shape ``(B, group.size, *spatial)`` or ``(B, group.size)``.
    ``model`` must have the architecture ``graph`` was built from (a permuted copy, the flipped
    twin, …): the probe shares its parameters and modules, no copy is made. ``probes`` maps
    group names to other node names (e.g. from ``group.nodes``) to override ``group.probe``;
    those activations are cloned where they are computed (a later in-place ReLU cannot change
    them). Default probes are returned without a copy: nothing in-place follows them.
    """

    def __init__(
        self,
        model: nn.Module,
        graph: ModelGraph,
        probes: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        chosen = {g.name: g.probe for g in graph.groups}
        if probes:
            unknown = sorted(set(probes) - set(chosen))
            if unknown:
                raise KeyError(f"unknown groups {unknown}")
            chosen.update(probes)
        source = graph.graph_module.graph
        new = fx.Graph()
        value_map: dict[fx.Node, fx.Node] = {}
        output = new.graph_copy(source, value_map)
        by_name = {n.name: value_map[n] for n in source.nodes if n in value_map}
        missing = sorted(v for v in chosen.values() if v not in by_name)
        if missing:
            raise KeyError(f"probe nodes {missing} are not in the graph")
        defaults = {g.probe for g in graph.groups}
        taps: dict[str, fx.Node] = {}
        for group, node_name in chosen.items():
            node = by_name[node_name]
            if node_name not in defaults:  # an earlier node: a later in-place op may change it
                with new.inserting_after(node):
                    node = new.call_method("clone", (node,))
            taps[group] = node
        new.output((output, taps))
        self.traced = fx.GraphModule(model, new, type(model).__name__ + "Probe")

    def forward(self, x: Tensor) -> tuple[Any, dict[str, Tensor]]:
        return self.traced(x)
