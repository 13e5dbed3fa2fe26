"""The contract every flip layer and flip model follows: :class:`FlipModule`."""

from __future__ import annotations

from torch import nn

from gcnn.nn.fields import Fields


class FlipModule(nn.Module):
    r"""Base class of flip-equivariant modules (hand-written, escnn-backed, whole models).

    A flip module maps a field of layout :attr:`in_fields` to one of layout :attr:`out_fields`
    and commutes with the flip: ``f(g·x) = g·f(x)`` (at input sizes where the exactness rule
    holds). ``None`` means the layout is not fixed by the module: pointwise modules (ReLU,
    max-pool) accept any layout and return the same one.

    :meth:`export` returns plain torch modules with identical outputs. It leaves ``self``
    alone: its train/eval mode, its class and its sub-module names (escnn's own ``export()``
    switches the module to eval; ours never does), and the result has ``self``'s mode.

    A flip module with no flip module below it is a *layer*: :func:`gcnn.flip_exactness` names
    it, not its children (e.g. the escnn module an escnn layer wraps), for the window ops it
    runs.
    """

    @property
    def in_fields(self) -> Fields | None:
        """The input layout, or ``None`` when any layout is accepted."""
        return None

    @property
    def out_fields(self) -> Fields | None:
        """The output layout, or ``None`` when it is the input's."""
        return None

    def export(self) -> nn.Module:
        """Plain torch modules with identical outputs (``self`` unchanged)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement export()")


class FlipHook:
    """Base class of the forward (pre-)hooks that flip models carry and plain models must not
    (e.g. the inexact-size warning of :mod:`gcnn.exactness`): :func:`gcnn.nn.export_modules`
    drops every hook that is an instance of it."""
