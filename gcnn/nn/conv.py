"""Reflection-symmetric (flip-equivariant) 2-D convolution on any field layout."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair
from torch.utils._python_dispatch import _get_current_dispatch_mode

try:  # a size hint without a guard (dynamo folds it to a constant while tracing)
    from torch.fx.experimental.symbolic_shapes import optimization_hint
except ImportError:  # pragma: no cover - older torch
    optimization_hint = None  # type: ignore[assignment]

from gcnn.nn.expansion import (
    ConvFields,
    FreeWeights,
    expand_bias,
    expand_conv_weight,
    free_bias,
    free_from_full,
    local_input_fields,
)
from gcnn.nn.fields import Fields, FieldSpec, check_field_spec
from gcnn.nn.isotypic import (
    ConvPath,
    IsotypicPlan,
    check_conv_path,
    isotypic_conv2d,
    macs_per_pixel,
    plan_for,
    prefers_gemm,
    prefers_isotypic,
    regular_conv2d_eager,
    unsupported_reason,
)
from gcnn.nn.isotypic_gemm import regular_conv2d_gemm
from gcnn.nn.isotypic_ops import COMPILED_GEMM_PASSES, COMPILED_STACKED_PASSES
from gcnn.nn.isotypic_tuning import Kernel, needs_backward, tuned_kernel, tuning_key, worth_tuning
from gcnn.nn.module import FlipModule

#: Free-weight block (see :mod:`gcnn.nn.expansion`) → parameter name, when it is not the first
#: present block (the first present block is always called ``weight``).
_BLOCK_NAMES = {"pairs": "weight", "invariant": "trivial_weight", "symmetric": "symmetric_weight"}


class FlipConv2d(FlipModule):
    r"""A conv that commutes with the horizontal flip: ``conv(g·x) = g·conv(x)``.

    Shapes: input ``(B, in_channels, H, W)``, output ``(B, out_channels, H', W')`` exactly as
    :class:`torch.nn.Conv2d` with the same arguments. Equivariance is exact when every strided
    op sees a width with ``(W + 2p - d(k-1) - 1) % s == 0`` (see :mod:`gcnn.exactness`).

    ``in_type`` / ``out_type``: a :class:`~gcnn.nn.Fields` layout (``t`` trivial channels,
    then ``r`` interleaved pairs) or the shorthand ``"trivial"`` / ``"regular"`` for all
    channels. Every combination works, trivial→trivial (mirror-symmetric kernels) included.
    The full weight is expanded from complete free weights by
    :func:`gcnn.nn.expansion.expand_conv_weight` (``F`` mirrors the kernel width, ``S`` swaps
    input pairs):

    * output pairs: ``self.weight`` is ``w`` of shape ``(pairs_out, in/groups, kh, kw)``,
      ``W[t + 2k] = w[k]`` and ``W[t + 2k + 1] = F S w[k]``; one bias per pair;
    * trivial outputs: free pair columns ``u`` of shape ``(t_out, pairs_in/groups, kh, kw)``
      (``W[:, 2j] = u[:, j]``, ``W[:, 2j+1] = F u[:, j]``) and, from trivial inputs,
      mirror-symmetric kernels of free left halves ``(t_out, t_in/groups, kh, ⌈kw/2⌉)``.

    The first non-empty block is the parameter ``weight`` (so the all-regular and all-trivial
    layouts keep their names); the others are ``trivial_weight`` (pair columns of trivial
    rows) and ``symmetric_weight``. The bias has shape ``(t_out + pairs_out,)``.

    Groups: each group must see the same input layout and the flip must map a row's group to
    its partner's: all-trivial or all-regular inputs with pairs inside groups, or depthwise
    (``groups == in == out``, same layout in and out; pair partners sit in neighbouring groups).
    Mixed layouts need ``groups == 1``.

    ``path`` picks how the forward computes the same function from the same free weights:
    ``"regular"`` runs ``F.conv2d`` on :meth:`full_weight`; ``"isotypic"`` runs the conv in
    the s/d basis of each pair at half the multiply-adds (:mod:`gcnn.nn.isotypic`);
    ``"auto"`` (default) measures: a regular → regular conv times the regular path and both
    isotypic kernels on the first forward of each input shape on a machine and keeps the
    fastest, in the process and in a per-machine file, so later runs there make the same
    choice (:mod:`gcnn.nn.isotypic_tuning`; tiny convs run ``F.conv2d`` untimed; under
    ``torch.compile`` the kernels are timed while dynamo traces); ``"static"`` takes the
    isotypic path where a fixed rule read off CPU measurements says it is faster
    (:func:`gcnn.nn.isotypic.prefers_isotypic`), never timing anything. Set it on a whole
    model with :func:`set_conv_path`. State dicts and :meth:`export` do not depend on it.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        in_type: FieldSpec = "regular",
        out_type: FieldSpec = "regular",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        path: ConvPath = "auto",
    ) -> None:
        super().__init__()
        check_field_spec(in_type, "in_type")
        check_field_spec(out_type, "out_type")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must be "
                f"divisible by groups ({groups})"
            )
        if in_type == "regular" and in_channels % 2:
            raise ValueError(f"a regular input needs an even in_channels, got {in_channels}")
        if out_type == "regular" and out_channels % 2:
            raise ValueError(f"a regular output needs an even out_channels, got {out_channels}")
        if isinstance(padding, str) and padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid', 'same' or ints, got {padding!r}")
        if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
            raise ValueError(f"unknown padding_mode {padding_mode!r}")
        self._in_fields = Fields.of(in_type, in_channels)
        self._out_fields = Fields.of(out_type, out_channels)
        self.in_type: FieldSpec = in_type
        self.out_type: FieldSpec = out_type
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.padding_mode = padding_mode
        self.fields = ConvFields(
            self._out_fields, local_input_fields(self._in_fields, self._out_fields, groups)
        )
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self._block_params: dict[str, str] = {}
        for i, (block, shape) in enumerate(self.fields.shapes(self.kernel_size).items()):
            name = "weight" if i == 0 else _BLOCK_NAMES[block]
            self._block_params[block] = name
            self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory)))
        n_bias = self._out_fields.trivial + self._out_fields.regular
        self.bias = nn.Parameter(torch.empty(n_bias, **factory)) if bias else None
        self.path: ConvPath = "regular"
        self.set_path(path)
        self.reset_parameters()

    def set_path(self, path: ConvPath) -> None:
        """Choose the forward's path (one of :data:`gcnn.nn.isotypic.CONV_PATHS`); raises
        when ``"isotypic"`` cannot run this conv."""
        check_conv_path(path)
        reason = unsupported_reason(self.fields, self._in_fields, self.groups)
        if path == "isotypic" and reason is not None:
            raise ValueError(f"the isotypic path cannot run {reason}; use path='auto'")
        self.path = path

    def runs_isotypic(self, x: Tensor) -> bool:
        """Whether :meth:`forward` takes the isotypic path for the input ``x``.

        Never on ``meta`` tensors or under a ``TorchDispatchMode`` outside ``torch.compile``
        (the op-level tools :func:`gcnn.flip_exactness` and :mod:`gcnn.exactness_check` follow
        the plain conv's columns and outputs, which the regular path computes)."""
        return self.kernel_for(x) != "regular"

    def kernel_for(self, x: Tensor) -> Kernel | Literal["isotypic"]:
        """Which kernel :meth:`forward` runs on ``x``: ``"regular"``, one of the two eager
        isotypic kernels of regular → regular convs (``"kh_x_1"``, ``"gemm"``), or
        ``"isotypic"`` (the general s/d path of mixed layouts). On ``"auto"`` the first
        forward of a new input key on this machine times the kernels
        (:func:`gcnn.nn.isotypic_tuning.tuned_kernel`)."""
        if self.path == "regular" or x.dim() != 4 or _op_tool_active(x):
            return "regular"
        if self.path == "isotypic":
            return self._isotypic_kernel()
        plan = self._plan()
        if self.path == "auto" and plan.eager_pairs:
            return self._tuned_kernel(x) if worth_tuning(macs_per_pixel(plan)) else "regular"
        return self._static_kernel()

    def _isotypic_kernel(self) -> Kernel | Literal["isotypic"]:
        """The kernel of the s/d path: ``"isotypic"`` (general) unless the plan is pairs in
        and out, then the one :func:`gcnn.nn.isotypic.prefers_gemm` picks."""
        plan = self._plan()
        if not plan.eager_pairs:
            return "isotypic"
        return "gemm" if prefers_gemm(plan) else "kh_x_1"

    def _tuned_kernel(self, x: Tensor) -> Kernel:
        """The measured kernel for ``x``. While ``torch.compile`` traces, ``x`` is a fake
        tensor: the kernels are timed on a channels-last stand-in of its shape
        (:func:`_kernel_at_trace_time`) and the choice enters the graph as a constant."""
        params = [self.weight] + ([] if self.bias is None else [self.bias])
        backward = needs_backward(x, params)
        if torch.compiler.is_compiling():
            if optimization_hint is None:  # a torch without it: the static rule, as before
                return self._static_kernel()  # type: ignore[return-value]
            # Dynamic shapes are SymInts: time the sizes seen while tracing (their hints).
            shape = tuple(optimization_hint(n) for n in x.shape)
            layout = (shape, x.dtype, x.device, x.requires_grad)
            return _kernel_at_trace_time(self, layout, backward)
        return self._measured_kernel(x, backward)

    def _measured_kernel(self, x: Tensor, backward: bool) -> Kernel:
        """:func:`~gcnn.nn.isotypic_tuning.tuned_kernel` for ``x`` (a real tensor)."""
        key = tuning_key(self._plan(), x, backward)
        candidates = partial(self._tuning_candidates, x, backward)
        return tuned_kernel(key, x.device, candidates, backward, self._static_kernel)  # type: ignore[arg-type]

    def _static_kernel(self) -> Kernel | Literal["isotypic"]:
        """The static rule's kernel (the ``"static"`` path, and ``"auto"``'s pick on
        near-ties)."""
        return self._isotypic_kernel() if self._static_isotypic() else "regular"

    def _tuning_candidates(self, x: Tensor, backward: bool) -> dict[Kernel, Callable[[], Tensor]]:
        """The three kernels on detached copies of ``x``, the weight and the bias."""

        def leaf(t: Tensor | None, grad: bool) -> Tensor | None:
            return None if t is None else t.detach().clone().requires_grad_(grad)

        x_, w_ = leaf(x, backward and x.requires_grad), leaf(self.weight, backward)
        b_ = leaf(self.bias, backward)
        plan = self._plan()
        (block,) = self._block_params  # regular → regular: the pair block only

        def regular() -> Tensor:
            free = FreeWeights(**{block: w_})
            weight = expand_conv_weight(free, self.fields, self.kernel_size[1])
            bias = None if b_ is None else expand_bias(b_, self._out_fields)
            return self._regular_conv(x_, weight, bias)

        return {
            "regular": regular,
            "kh_x_1": lambda: regular_conv2d_eager(x_, w_, b_, plan),
            "gemm": lambda: regular_conv2d_gemm(x_, w_, b_, plan),
        }

    def _static_isotypic(self) -> bool:
        """The static rule's answer for this conv (cached: hyper-parameters are fixed
        after construction, and the rule reads nothing else). Cached by hand in ``__dict__``,
        not with ``functools.cached_property``: on Python 3.11 its ``__get__`` takes an
        ``RLock``, which ``torch.compile`` cannot trace (tests/nn/test_isotypic.py fails)."""
        cached = self.__dict__.get("_static_isotypic_cache")
        if cached is None:
            supported = unsupported_reason(self.fields, self._in_fields, self.groups) is None
            cached = supported and prefers_isotypic(self._plan())
            self.__dict__["_static_isotypic_cache"] = cached
        return cached

    @property
    def in_fields(self) -> Fields:
        return self._in_fields

    @property
    def out_fields(self) -> Fields:
        return self._out_fields

    def free_weights(self) -> FreeWeights:
        """The free blocks (parameters, not copies)."""
        return FreeWeights(**{b: getattr(self, n) for b, n in self._block_params.items()})

    def free_parameter_count(self) -> int:
        """Free parameters of the weight: the dimension of the equivariant filters."""
        return self.fields.free_count(self.kernel_size)

    def reset_parameters(self) -> None:
        """He-normal init of the full filter, fan-in ``in/groups · kh · kw``."""
        kh, kw = self.kernel_size
        fan_in = (self.in_channels // self.groups) * kh * kw
        for name in self._block_params.values():
            nn.init.normal_(getattr(self, name), 0.0, math.sqrt(2.0 / fan_in))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def full_weight(self) -> Tensor:
        """The constrained weight of shape ``(out_channels, in_channels/groups, kh, kw)``."""
        return expand_conv_weight(self.free_weights(), self.fields, self.kernel_size[1])

    def full_bias(self) -> Tensor | None:
        """The bias of shape ``(out_channels,)``, repeated inside pairs."""
        return None if self.bias is None else expand_bias(self.bias, self._out_fields)

    def forward(self, x: Tensor) -> Tensor:
        kernel = self.kernel_for(x)
        if kernel == "regular":
            return self._regular_conv(x, self.full_weight(), self.full_bias())
        if kernel == "isotypic":
            return isotypic_conv2d(x, self.free_weights(), self.bias, self._plan(), self._in_fields)
        return self._eager_pairs_conv(x, kernel)

    def _regular_conv(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """``F.conv2d`` with the full ``weight`` (after a non-zero ``padding_mode`` pad)."""
        if self.padding_mode != "zeros":
            if isinstance(self.padding, str):
                raise ValueError("string padding needs padding_mode='zeros'")
            ph, pw = self.padding
            x = F.pad(x, (pw, pw, ph, ph), mode=self.padding_mode)
            padding: tuple[int, int] | str = (0, 0)
        else:
            padding = self.padding
        return F.conv2d(x, weight, bias, self.stride, padding, self.dilation, self.groups)

    def _plan(self) -> IsotypicPlan:
        """How the isotypic path runs this conv (cached as :meth:`_static_isotypic` is)."""
        cached = self.__dict__.get("_plan_cache")
        if cached is None:
            cached = self.__dict__["_plan_cache"] = self._build_plan()
        return cached

    def _build_plan(self) -> IsotypicPlan:
        return plan_for(
            self.fields, self._in_fields, self.groups, self.kernel_size, self.stride,
            self.padding, self.dilation, self.padding_mode,
        )  # fmt: skip

    def _eager_pairs_conv(self, x: Tensor, kernel: Kernel) -> Tensor:
        """A regular → regular conv on one of the hand-scheduled kernels (as ``gcnn::``
        custom ops under ``torch.compile``)."""
        plan = self._plan()
        gemm = kernel == "gemm"
        run = regular_conv2d_gemm if gemm else regular_conv2d_eager
        if not torch.compiler.is_compiling():
            return run(x, self.weight, self.bias, plan)
        compiled = COMPILED_GEMM_PASSES if gemm else COMPILED_STACKED_PASSES
        return run(x, self.weight, self.bias, plan, compiled)

    def _factory(self) -> dict[str, Any]:
        ref = next(iter(self.parameters()))
        return {"device": ref.device, "dtype": ref.dtype}

    @torch.no_grad()
    def export(self) -> nn.Conv2d:
        """A plain :class:`torch.nn.Conv2d` with the full weight: identical outputs."""
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            bias=self.bias is not None,
            padding_mode=self.padding_mode,
            **self._factory(),
        )
        conv.weight.copy_(self.full_weight())
        if self.bias is not None:
            conv.bias.copy_(self.full_bias())
        return conv.train(self.training)

    @torch.no_grad()
    def set_full_weight(self, weight: Tensor, bias: Tensor | None = None) -> None:
        """Set the free weights from a full filter (and the bias from a full ``(out,)`` bias)
        with :func:`gcnn.nn.expansion.free_from_full`: exact for an equivariant filter."""
        free = free_from_full(weight, self.fields)
        for block, name in self._block_params.items():
            getattr(self, name).copy_(getattr(free, block))
        if bias is not None and self.bias is not None:
            self.bias.copy_(free_bias(bias, self._out_fields))

    @classmethod
    @torch.no_grad()
    def from_conv(
        cls, conv: nn.Conv2d, in_type: FieldSpec = "regular", out_type: FieldSpec = "regular"
    ) -> FlipConv2d:
        """A flip conv with ``conv``'s hyper-parameters, initialised from its weights.

        The free weights are read off ``conv``'s filter (:meth:`set_full_weight`: the first
        filter of each output pair, the first column of each input pair of trivial outputs,
        the left half of trivial→trivial kernels), so the filter scale of ``conv``'s init is
        kept, and an equivariant ``conv`` converts exactly.
        """
        flip = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            in_type=in_type,
            out_type=out_type,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        flip.set_full_weight(conv.weight, conv.bias)
        return flip.train(conv.training)

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}"
        )
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        if self.path != "auto":
            s += f", path={self.path}"
        return s + f", {_describe(self.in_type)}→{_describe(self.out_type)}"


#: What :func:`_kernel_at_trace_time` needs of a traced input: shape, dtype, device, and
#: whether it requires a gradient.
InputLayout = tuple[tuple[int, ...], torch.dtype, torch.device, bool]


@torch.compiler.assume_constant_result
def _kernel_at_trace_time(conv: FlipConv2d, layout: InputLayout, backward: bool) -> Kernel:
    """``conv``'s measured kernel for a traced input of ``layout``, called while dynamo traces.

    ``assume_constant_result``: dynamo runs it once, in Python, and its answer is a constant
    of the graph (no branch, no guard). The kernels are timed on a random stand-in of the
    traced input's shape, drawn from a private generator (the global RNG stream is not
    touched), in **channels-last** memory: inductor, ``torch.compile``'s default backend, runs
    the convs of a graph channels-last, so that is what the regular kernel computes on there,
    and what the s/d kernels (custom ops on channels-first tensors) convert from. Timed
    channels-first, the regular kernel lost layers that it wins compiled (ResNet50 on one
    AMD EPYC: 0.92× plain, against 1.01× timed channels-last and 1.03× on the regular path;
    ``benchmarks/README.md``). The choice goes through eager mode's per-process cache and
    per-machine file (keyed by the stand-in's channels-last strides, as an eager run on a
    channels-last input would be)."""
    shape, dtype, device, requires_grad = layout
    generator = torch.Generator(device).manual_seed(0)
    x = torch.empty(shape, dtype=dtype, device=device, memory_format=torch.channels_last)
    x.normal_(generator=generator).requires_grad_(requires_grad)
    with torch.set_grad_enabled(backward):
        return conv._measured_kernel(x, backward)


def _op_tool_active(x: Tensor) -> bool:
    """A meta input, or a dispatch-level tool watching the ops (not compilation)."""
    if torch.compiler.is_compiling():
        return False
    return x.device.type == "meta" or _get_current_dispatch_mode() is not None


def _describe(spec: FieldSpec) -> str:
    return spec if isinstance(spec, str) else str(spec)


def set_conv_path(module: nn.Module, path: ConvPath) -> nn.Module:
    """Set the forward path of every :class:`FlipConv2d` in ``module`` (itself included);
    returns ``module``. ``"isotypic"`` raises on a conv it cannot run (before changing any)."""
    convs = [m for m in module.modules() if isinstance(m, FlipConv2d)]
    check_conv_path(path)
    if path == "isotypic":
        for conv in convs:
            reason = unsupported_reason(conv.fields, conv.in_fields, conv.groups)
            if reason is not None:
                raise ValueError(f"the isotypic path cannot run {reason}; use path='auto'")
    for conv in convs:
        conv.set_path(path)
    return module
