"""Public helpers to test flip equivariance of any module (in the spirit of e3nn's)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gcnn.nn.fields import FieldType, flip_action

#: Default relative tolerance per dtype for ``‖f(g·x) − g·f(x)‖ / ‖f(x)‖``.
TOLERANCES: dict[torch.dtype, float] = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.bfloat16: 3e-2,
    torch.float16: 5e-3,
}


def flip_equivariance_error(
    module: nn.Module | torch.nn.Module,
    x: Tensor,
    in_type: FieldType = "trivial",
    out_type: FieldType = "trivial",
) -> float:
    r"""Relative error ``‖f(g·x) − g·f(x)‖ / ‖f(x)‖`` of ``f = module`` under the flip ``g``.

    ``x`` has shape ``(B, C, H, W)``; ``in_type`` / ``out_type`` say how the flip acts on the
    input and on the output (see :func:`gcnn.nn.flip_action`). For logits ``(B, K)`` use
    ``out_type="trivial"``: the check is then invariance. Runs without gradients, in the
    module's current mode (train-mode BatchNorm updates its running statistics twice).
    """
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


def assert_flip_equivariant(
    module: nn.Module,
    x: Tensor,
    in_type: FieldType = "trivial",
    out_type: FieldType = "trivial",
    rtol: float | None = None,
) -> float:
    """Assert ``module`` is flip-equivariant on ``x``; return the relative error.

    ``rtol`` defaults to :data:`TOLERANCES` for ``x``'s dtype. Raises ``AssertionError`` with
    the measured error otherwise.
    """
    tol = TOLERANCES.get(x.dtype, 1e-5) if rtol is None else rtol
    err = flip_equivariance_error(module, x, in_type, out_type)
    if not err <= tol:
        raise AssertionError(
            f"{type(module).__name__} is not flip-equivariant ({in_type}→{out_type}) on input "
            f"{tuple(x.shape)} {x.dtype}: relative error {err:.3g} > tolerance {tol:.1g}"
        )
    return err


def assert_same_outputs(a: nn.Module, b: nn.Module, x: Tensor, rtol: float | None = None) -> float:
    """Assert ``a(x)`` and ``b(x)`` agree (relative norm error ≤ ``rtol``); return the error."""
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
