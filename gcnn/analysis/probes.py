"""Where a permutation group's activations are measured: its *probe nodes*.

A group's channels are carried by several nodes of the traced graph (``PermGroup.nodes``: a
conv's output, its BatchNorm, the ReLU, the max-pool, …; a residual stream: every block's sum
and ReLU). The statistics of a group are summed over its probe nodes (pixels and nodes both
count as samples). Modes:

* ``"activation"`` (default): every node of the group that is the output of a pointwise
  nonlinearity (ReLU, ReLU6, SiLU, GELU, Hardswish, …) on a map at least 2 pixels wide — the
  ReLU output of each layer *before* pooling (4× more samples than after a 2×2 max-pool), and
  for a residual stream the output of every block, as REPAIR and the published notebook do.
  A group with no such node (a linear bottleneck) falls back to ``"last"``.
* ``"last"``: the last node carrying the group on a map at least 2 pixels wide (a pooled
  ``(B, C)`` vector is flip-invariant for *any* net, so it cannot tell mirror pairs from
  invariant channels), else the group's last node.
* ``{group: [node names]}``: explicit nodes (from ``PermGroup.nodes``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, fx, nn
from torch.nn import functional as F

from gcnn.analysis.graph import ModelGraph

ACTIVATION_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.LeakyReLU, nn.ELU, nn.Mish, nn.PReLU,
    nn.CELU, nn.SELU, nn.Softplus, nn.Tanh,
)  # fmt: skip
ACTIVATION_FUNCTIONS = {
    F.relu, F.relu6, F.silu, F.gelu, F.hardswish, F.leaky_relu, F.elu, F.mish, F.celu,
    F.selu, F.softplus,
}  # fmt: skip
ACTIVATION_METHODS = {"relu", "relu_", "sigmoid", "tanh"}
PROBE_MODES = ("activation", "last")

ProbeSpec = str | Mapping[str, Sequence[str]]


def _is_activation(node: fx.Node, gm: fx.GraphModule) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(str(node.target)), ACTIVATION_MODULES)
    if node.op == "call_function":
        import torch

        return node.target in ACTIVATION_FUNCTIONS or node.target in (torch.relu, torch.relu_)
    if node.op == "call_method":
        return node.target in ACTIVATION_METHODS
    return False


def _wide(node: fx.Node) -> bool:
    shape = getattr(node.meta.get("tensor_meta"), "shape", ())
    return len(shape) >= 3 and shape[-1] > 1


def probe_nodes(graph: ModelGraph, mode: ProbeSpec = "activation") -> dict[str, list[str]]:
    """``{group name: [node names]}`` for ``mode`` (see the module docstring)."""
    if not isinstance(mode, str):
        chosen = {g.name: list(g.nodes[-1:]) for g in graph.groups}
        unknown = sorted(set(mode) - set(chosen))
        if unknown:
            raise KeyError(f"unknown groups {unknown}; groups: {sorted(chosen)}")
        for name, nodes in mode.items():
            missing = sorted(set(nodes) - set(graph.group(name).nodes))
            if missing or not nodes:
                raise KeyError(f"group {name!r} is not carried by nodes {missing or nodes}")
            chosen[name] = list(nodes)
        return chosen
    if mode not in PROBE_MODES:
        raise ValueError(f"unknown probe mode {mode!r}; choose one of {', '.join(PROBE_MODES)}")
    gm = graph.graph_module
    nodes = {n.name: n for n in gm.graph.nodes}
    out = {}
    for group in graph.groups:
        wide = [name for name in group.nodes if _wide(nodes[name])]
        last = wide[-1:] or group.nodes[-1:]
        if mode == "activation":
            active = [name for name in wide if _is_activation(nodes[name], gm)]
            out[group.name] = active or last
        else:
            out[group.name] = last
    return out


def copy_graph(graph: ModelGraph) -> tuple[fx.Graph, Any, dict[str, fx.Node]]:
    """A copy of the traced graph without its output node: ``(graph, output value, by name)``."""
    source = graph.graph_module.graph
    new = fx.Graph()
    value_map: dict[fx.Node, fx.Node] = {}
    output = new.graph_copy(source, value_map)
    return new, output, {n.name: value_map[n] for n in source.nodes if n in value_map}


def tap_nodes(model: nn.Module, graph: ModelGraph, taps: Mapping[str, Any]) -> fx.GraphModule:
    """``model`` re-traced to return ``(model(x), taps)`` where ``taps`` is a structure of node
    names (a dict of names, or of lists of names), each replaced by a clone of its output."""
    new, output, by_name = copy_graph(graph)

    def tap(name: str) -> fx.Node:
        with new.inserting_after(by_name[name]):
            return new.call_method("clone", (by_name[name],))

    values = {
        key: [tap(n) for n in names] if isinstance(names, list | tuple) else tap(names)
        for key, names in taps.items()
    }
    new.output((output, values))
    return fx.GraphModule(model, new, type(model).__name__ + "Probe")


class MultiProbe(nn.Module):
    """``model`` re-traced so that ``forward(x)`` also returns every group's probe activations.

    ``forward(x) -> (model(x), {group: [activation (B, C, *spatial), …]})``, one activation per
    probe node (cloned where computed, so a later in-place op cannot change it). ``model`` must
    have the architecture ``graph`` was traced from (the model itself, its flipped twin, a
    permuted copy): the probe shares its parameters and modules.
    """

    def __init__(self, model: nn.Module, graph: ModelGraph, nodes: Mapping[str, list[str]]):
        super().__init__()
        self.traced = tap_nodes(model, graph, {g: list(names) for g, names in nodes.items()})

    def forward(self, x: Tensor) -> tuple[Any, dict[str, list[Tensor]]]:
        return self.traced(x)
