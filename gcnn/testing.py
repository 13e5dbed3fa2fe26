"""Public helpers to test flip equivariance of any module (in the spirit of e3nn's).

:func:`assert_flip_equivariant` works out the field layouts itself for a
:class:`~gcnn.nn.FlipModule` (its ``in_fields`` / ``out_fields``); for any other module they
default to trivial (images in, invariant outputs out) and can be passed explicitly.
:func:`assert_compiled_matches_eager` checks that ``torch.compile`` keeps a model's outputs and
its equivariance; :func:`saved_for_backward_when_compiled` lists what its forward keeps for the
backward.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gcnn.nn.fields import Fields, FieldSpec, flip_action
from gcnn.nn.module import FlipModule

#: Default relative tolerance per dtype for ``‖f(g·x) − g·f(x)‖ / ‖f(x)‖``.
TOLERANCES: dict[torch.dtype, float] = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.bfloat16: 3e-2,
    torch.float16: 5e-3,
}


def field_types(
    module: nn.Module, in_type: FieldSpec | None = None, out_type: FieldSpec | None = None
) -> tuple[FieldSpec, FieldSpec]:
    """The input and output layouts to test ``module`` with.

    Explicit arguments win; otherwise a :class:`FlipModule`'s ``in_fields`` / ``out_fields``
    (a module that keeps the layout, ``out_fields is None``, maps ``in_fields`` to itself);
    otherwise ``"trivial"``.
    """
    inferred_in = module.in_fields if isinstance(module, FlipModule) else None
    inferred_out = module.out_fields if isinstance(module, FlipModule) else None
    if inferred_out is None:
        inferred_out = inferred_in
    resolved_in: FieldSpec = in_type or inferred_in or "trivial"
    resolved_out: FieldSpec = out_type or inferred_out or "trivial"
    return resolved_in, resolved_out


def flip_equivariance_error(
    module: nn.Module,
    x: Tensor,
    in_type: FieldSpec | None = None,
    out_type: FieldSpec | None = None,
) -> float:
    r"""Relative error ``‖f(g·x) − g·f(x)‖ / ‖f(x)‖`` of ``f = module`` under the flip ``g``.

    ``x`` has shape ``(B, C, H, W)`` (or ``(B, C)``); ``in_type`` / ``out_type`` say how the
    flip acts on the input and on the output (a :class:`~gcnn.nn.Fields` or a shorthand, see
    :func:`gcnn.nn.flip_action`); by default they are inferred (:func:`field_types`). For
    logits ``(B, K)`` the trivial output makes the check one of invariance. Runs without
    gradients, in the module's current mode (train-mode BatchNorm updates its running
    statistics twice).
    """
    in_type, out_type = field_types(module, in_type, out_type)
    with torch.no_grad():
        y = module(x)
        y_of_flipped = module(flip_action(x, in_type))
    expected = flip_action(y, out_type)
    if y_of_flipped.shape != expected.shape:
        raise ValueError(
            f"output shapes differ: f(g·x) {tuple(y_of_flipped.shape)} vs g·f(x) "
            f"{tuple(expected.shape)}"
        )
    diff = torch.linalg.vector_norm((y_of_flipped - expected).double())
    scale = torch.linalg.vector_norm(y.double()).clamp_min(torch.finfo(torch.float64).tiny)
    return float(diff / scale)


def _describe(spec: FieldSpec) -> str:
    return str(spec) if isinstance(spec, Fields) else spec


def assert_flip_equivariant(
    module: nn.Module,
    x: Tensor,
    in_type: FieldSpec | None = None,
    out_type: FieldSpec | None = None,
    rtol: float | None = None,
) -> float:
    """Assert ``module`` is flip-equivariant on ``x``; return the relative error.

    Field layouts are inferred from a :class:`~gcnn.nn.FlipModule` unless given
    (:func:`field_types`). ``rtol`` defaults to :data:`TOLERANCES` for ``x``'s dtype. Raises
    ``AssertionError`` with the measured error otherwise; pytest hides this helper's frame.
    """
    __tracebackhide__ = True
    in_type, out_type = field_types(module, in_type, out_type)
    tol = TOLERANCES.get(x.dtype, 1e-5) if rtol is None else rtol
    err = flip_equivariance_error(module, x, in_type, out_type)
    if not err <= tol:
        raise AssertionError(
            f"{type(module).__name__} is not flip-equivariant ({_describe(in_type)}→"
            f"{_describe(out_type)}) on input {tuple(x.shape)} {x.dtype}: relative error "
            f"{err:.3g} > tolerance {tol:.1g}"
        )
    return err


def assert_same_outputs(a: nn.Module, b: nn.Module, x: Tensor, rtol: float | None = None) -> float:
    """Assert ``a(x)`` and ``b(x)`` agree (relative norm error ≤ ``rtol``); return the error."""
    __tracebackhide__ = True
    tol = TOLERANCES.get(x.dtype, 1e-5) if rtol is None else rtol
    with torch.no_grad():
        ya, yb = a(x), b(x)
    err = float(
        torch.linalg.vector_norm((ya - yb).double())
        / torch.linalg.vector_norm(ya.double()).clamp_min(1e-300)
    )
    if not err <= tol:
        raise AssertionError(f"outputs differ: relative error {err:.3g} > tolerance {tol:.1g}")
    return err


def assert_compiled_matches_eager(
    module: nn.Module,
    x: Tensor,
    rtol: float | None = None,
    backend: str = "inductor",
    in_type: FieldSpec | None = None,
    out_type: FieldSpec | None = None,
) -> nn.Module:
    """Assert ``torch.compile(module)`` gives ``module``'s outputs on ``x`` and is as
    flip-equivariant; return the compiled module.

    ``rtol`` (default: the dtype's tolerance, times 10 for the compiler's reordered sums)
    bounds both the compiled-vs-eager error and the compiled model's equivariance error.
    """
    __tracebackhide__ = True
    tol = 10 * TOLERANCES.get(x.dtype, 1e-5) if rtol is None else rtol
    in_type, out_type = field_types(module, in_type, out_type)
    compiled = torch.compile(module, backend=backend)
    assert_same_outputs(module, compiled, x, rtol=tol)
    assert_flip_equivariant(compiled, x, in_type, out_type, rtol=tol)
    return compiled


def saved_for_backward_when_compiled(
    module: nn.Module, x: Tensor
) -> list[tuple[torch.dtype, torch.Size]]:
    """``(dtype, shape)`` of each tensor that ``torch.compile`` (inductor's decompositions and
    min-cut partitioner) keeps from ``module``'s forward on ``x`` for its backward: the
    compiled forward graph's outputs after ``module``'s own (one tensor).

    Runs one forward through the AOT autograd partition only (no inductor code generation, no
    backward, so no ``.grad`` is touched); clears dynamo's cache first. ``x`` or the module's
    parameters must require gradients. Use it to see what a compiled training step stores
    between forward and backward: e.g. a ``torch.bool`` tensor per ReLU whose mask the
    partitioner keeps, which inductor's CPU code stored at ≈ 6 ns per element on one AVX-512
    CPU (benchmarks/README.md).
    """
    import torch._inductor.lowering  # noqa: F401  (some of inductor's decompositions read it)
    from functorch.compile import min_cut_rematerialization_partition
    from torch._dynamo.backends.common import aot_autograd
    from torch._inductor.decomposition import select_decomp_table

    saved: list[tuple[torch.dtype, torch.Size]] = []

    def forward_compiler(graph: torch.fx.GraphModule, example_inputs: list) -> object:
        (output,) = (node for node in graph.graph.nodes if node.op == "output")
        for node in output.args[0][1:]:
            value = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
            if isinstance(value, Tensor):
                saved.append((value.dtype, value.shape))
        return graph.forward

    backend = aot_autograd(
        fw_compiler=forward_compiler,
        bw_compiler=lambda graph, example_inputs: graph.forward,
        partition_fn=min_cut_rematerialization_partition,
        decompositions=select_decomp_table(),
    )
    torch._dynamo.reset()
    torch.compile(module, backend=backend, fullgraph=True)(x)
    return saved
