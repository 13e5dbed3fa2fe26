"""BatchNorm whose statistics and affine parameters are shared inside each channel pair."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from gcnn.nn.expansion import expand_bias
from gcnn.nn.fields import Fields, FieldSpec, check_field_spec
from gcnn.nn.module import FlipModule
from gcnn.nn.precision import accumulation_dtype


def normalises_channels_last_in_place(device: torch.device) -> bool:
    """Whether :class:`FlipBatchNorm2d` normalises a channels-last ``(B, C, H, W)`` input on its
    ``(B·H·W, C/2, 2)`` view, keeping the layout (accelerators), rather than as a channels-first
    copy (CPU: ``batch_norm`` on that view is ≈ 10× slower there, forward and backward, than
    the two copies)."""
    return device.type != "cpu"


class FlipBatchNorm2d(nn.modules.batchnorm._BatchNorm, FlipModule):
    r"""BatchNorm on a field layout: one mean, variance, weight and bias per field.

    Input and output ``(B, C, H, W)`` with ``C = t + 2r`` for ``fields = Fields(t, r)``
    (default ``"regular"``: ``t = 0``). A trivial channel is normalised on its own, as in
    :class:`torch.nn.BatchNorm2d`; pair ``k`` with statistics over batch, height, width *and*
    both channels ``t + 2k, t + 2k + 1``, which is what makes it flip-equivariant in train mode
    too: ``g·x`` has the same pair statistics as ``x``. Parameters and buffers have shape
    ``(t + r,)``: the trivial channels', then the pairs'.

    On a regular field no copy of the activations is made and the memory format is kept: a
    channels-first input is viewed as ``(B, C/2, 2H, W)``, a channels-last one as
    ``(B·H·W, C/2, 2)``, and both go through :func:`torch.nn.functional.batch_norm`. A mixed
    layout normalises its two parts separately and concatenates them.
    """

    def __init__(
        self,
        num_channels: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        fields: FieldSpec = "regular",
    ) -> None:
        layout = Fields.of(check_field_spec(fields, "fields"), num_channels)
        super().__init__(
            layout.trivial + layout.regular,
            eps,
            momentum,
            affine,
            track_running_stats,
            device=device,
            dtype=dtype,
        )
        self.num_channels = num_channels
        self.fields = layout

    @property
    def in_fields(self) -> Fields:
        return self.fields

    @property
    def out_fields(self) -> Fields:
        return self.fields

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"expected a 4-D input (B, C, H, W), got {x.dim()}-D")
        if x.shape[1] != self.num_channels:
            raise ValueError(f"expected {self.num_channels} channels, got {x.shape[1]}")

    def _momentum_and_mode(self) -> tuple[float, bool]:
        """Mirror torch's _BatchNorm bookkeeping: (exponential_average_factor, use_batch_stats)."""
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = (
                1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            )
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        return factor, use_batch_stats

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        factor, use_batch_stats = self._momentum_and_mode()
        t = self.fields.trivial
        if t == 0:
            return self._normalise_pairs(x, slice(None), factor, use_batch_stats)
        trivial = self._batch_norm(x[:, :t], slice(0, t), factor, use_batch_stats)
        if self.fields.regular == 0:
            return trivial
        pairs = self._normalise_pairs(x[:, t:], slice(t, None), factor, use_batch_stats)
        return torch.cat((trivial, pairs), dim=1)

    def _batch_norm(self, x: Tensor, part: slice, factor: float, use_batch_stats: bool) -> Tensor:
        """``F.batch_norm`` of ``x`` with the parameters and buffers ``[part]`` (views: the
        running statistics are updated in place)."""
        running = not self.training or self.track_running_stats

        whole = part == slice(None)

        def view(t: Tensor | None) -> Tensor | None:
            return t if t is None or whole else t[part]

        return F.batch_norm(
            x,
            view(self.running_mean) if running else None,
            view(self.running_var) if running else None,
            view(self.weight),
            view(self.bias),
            use_batch_stats,
            factor,
            self.eps,
        )

    def _normalise_pairs(
        self, x: Tensor, part: slice, factor: float, use_batch_stats: bool
    ) -> Tensor:
        if use_batch_stats and torch.compiler.is_compiling() and part == slice(None):
            return self._normalise_pairs_by_channel(x, factor)
        b, c, h, w = x.shape
        channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        pair_view = channels_last and normalises_channels_last_in_place(x.device)
        if pair_view:
            pairs = x.permute(0, 2, 3, 1).reshape(b * h * w, c // 2, 2)
        else:
            pairs = x.contiguous().view(b, c // 2, 2 * h, w)
        y = self._batch_norm(pairs, part, factor, use_batch_stats)
        out = y.view(b, h, w, c).permute(0, 3, 1, 2) if pair_view else y.view(b, c, h, w)
        # A fresh tensor for autograd, not a view: models apply in-place ops to BatchNorm's
        # output (``ReLU(inplace=True)``, ``out += identity``), and on a view autograd would
        # rebase the history through ``CopySlices``, which costs two extra passes over the
        # gradient in the backward (≈ 1.7× this layer's forward + backward, measured on CPU).
        # Safe because batch_norm's backward does not read its output.
        out = torch.ops.aten._unsafe_view(out, (b, c, h, w))
        # channels-last in, channels-last out (a no-op for the pair view, a copy on CPU)
        return out.contiguous(memory_format=torch.channels_last) if channels_last else out

    def _normalise_pairs_by_channel(self, x: Tensor, factor: float) -> Tensor:
        """Train-mode pair statistics from per-channel ones, for ``torch.compile``
        (:class:`_PairBatchNorm`): inductor's code for ``batch_norm`` on the
        ``(B, C/2, 2H, W)`` view ran ≈ 5× slower on CPU. The running variance gets the
        unbiased ``σ²·2n/(2n − 1)``, as ``F.batch_norm`` does. All-pair layouts only (mixed
        ones keep the view path: updating one slice of the running buffers in place here trips
        autograd's version check on the other's)."""
        y, mean, var = _PairBatchNorm.apply(x, self.weight, self.bias, self.eps)
        if self.track_running_stats and self.running_mean is not None:
            b, _, h, w = x.shape
            count = 2 * b * h * w
            unbiased = var * count / max(count - 1, 1)
            with torch.no_grad():
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        return y

    @torch.no_grad()
    def export(self) -> nn.BatchNorm2d:
        """A plain :class:`torch.nn.BatchNorm2d` with every pair's parameters repeated.

        Eval mode: identical outputs. Train mode: identical whenever the batch is closed under
        the flip (it holds ``x`` and ``x.flip(-1)``), since then both channels of a pair have
        the pair's statistics; otherwise plain BatchNorm normalises each channel on its own.
        """
        bn = nn.BatchNorm2d(
            self.num_channels,
            self.eps,
            self.momentum,
            self.affine,
            self.track_running_stats,
            device=self.bias.device if self.affine else None,
            dtype=self.bias.dtype if self.affine else None,
        )
        if self.affine:
            bn.weight.copy_(expand_bias(self.weight, self.fields))
            bn.bias.copy_(expand_bias(self.bias, self.fields))
        if self.track_running_stats:
            bn.running_mean.copy_(expand_bias(self.running_mean, self.fields))
            bn.running_var.copy_(expand_bias(self.running_var, self.fields))
            bn.num_batches_tracked.copy_(self.num_batches_tracked)
        return bn.train(self.training)

    @classmethod
    @torch.no_grad()
    def from_batchnorm(cls, bn: nn.BatchNorm2d, fields: FieldSpec = "regular") -> FlipBatchNorm2d:
        """A pair-sharing BatchNorm with ``bn``'s settings; parameters averaged inside pairs."""
        ref = bn.weight if bn.affine else bn.running_mean
        flip = cls(
            bn.num_features,
            bn.eps,
            bn.momentum,
            bn.affine,
            bn.track_running_stats,
            device=None if ref is None else ref.device,
            dtype=None if ref is None else ref.dtype,
            fields=fields,
        )
        layout = flip.fields
        if bn.affine:
            flip.weight.copy_(pair_mean(bn.weight, layout))
            flip.bias.copy_(pair_mean(bn.bias, layout))
        if bn.track_running_stats:
            flip.running_mean.copy_(pair_mean(bn.running_mean, layout))
            flip.running_var.copy_(pair_mean(bn.running_var, layout))
            flip.num_batches_tracked.copy_(bn.num_batches_tracked)
        return flip.train(bn.training)

    def extra_repr(self) -> str:
        return f"{self.num_channels} ({self.fields}), eps={self.eps}, " + (
            f"momentum={self.momentum}, affine={self.affine}"
        )


def pair_mean(values: Tensor, fields: Fields) -> Tensor:
    """``(C,) → (t + r,)``: trivial channels kept, each pair averaged."""
    t = fields.trivial
    return torch.cat((values[:t], values[t:].view(-1, 2).mean(1)))


class _PairBatchNorm(torch.autograd.Function):
    r"""Train-mode BatchNorm of ``x`` ``(B, C, H, W)`` with statistics shared by the channel
    pairs ``(2k, 2k + 1)``, in per-channel reductions and per-channel pointwise passes (for
    ``torch.compile``).

    Forward, with channel means ``m_a, m_b`` and biased variances ``v_a, v_b`` of pair ``k``
    over ``n = B·H·W`` values each: ``μ = (m_a + m_b)/2``,
    ``σ² = (v_a + v_b)/2 + ((m_a − m_b)/2)²``, ``r = (σ² + ε)^(-1/2)``,
    ``y = γ (x − μ) r + β`` (``γ, β`` ``(C/2,)`` or ``None``). Returns ``y`` and the pair
    ``μ, σ²`` (for the running statistics; not differentiated).

    Backward, the BatchNorm gradient with ``N = 2n`` values per pair and ``x̂ = (x − μ) r``:
    ``∂β = Σ g``, ``∂γ = Σ g x̂`` (sums over a pair), ``∂x = γ r (g − ∂β/N − x̂ ∂γ/N)``.

    Low-precision inputs (bf16 / fp16 under autocast) are computed in float32, as
    ``F.batch_norm`` does: statistics, coefficients and gradients of ``γ, β`` in float32, ``y``
    and ``∂x`` in ``x``'s dtype.

    Every per-pair coefficient reaches the ``(B, C, H, W)`` passes as a ``(C,)`` vector made
    by :func:`_to_channels`, so inductor's generated loops read it at the channel index
    ``c``; a plain ``repeat_interleave`` fuses into them as a scalar load at ``c // 2`` per
    element, which kept its CPU loops from vectorising over channels-last data.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        var_c, mean_c = torch.var_mean(x.to(accumulation_dtype(x)), dim=(0, 2, 3), correction=0)
        means = mean_c.view(-1, 2)
        mean = means.mean(1)
        var = var_c.view(-1, 2).mean(1) + ((means[:, 0] - means[:, 1]) / 2) ** 2
        rstd = torch.rsqrt(var + eps)
        scale = rstd if weight is None else rstd * weight
        shift = -mean * scale if bias is None else bias - mean * scale
        y = (x * _to_channels(scale) + _to_channels(shift)).to(x.dtype)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, grad: Tensor, _mean: Tensor | None, _var: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        x, weight, mean, rstd = ctx.saved_tensors
        count = 2 * x.numel() // x.shape[1]
        centred = x - _to_channels(mean)  # in the accumulation dtype (``mean``'s)
        grad = grad.to(mean.dtype)
        grad_bias = grad.sum(dim=(0, 2, 3)).view(-1, 2).sum(1)
        grad_weight = (grad * centred).sum(dim=(0, 2, 3)).view(-1, 2).sum(1) * rstd
        gain = rstd if weight is None else rstd * weight
        grad_x = (
            grad * _to_channels(gain)
            - _to_channels(gain * grad_bias / count)
            - centred * _to_channels(gain * rstd * grad_weight / count)
        )
        needs = ctx.needs_input_grad
        return (
            grad_x.to(x.dtype) if needs[0] else None,
            grad_weight.to(weight.dtype) if weight is not None and needs[1] else None,
            grad_bias.to(ctx.bias_dtype) if needs[2] else None,
            None,
        )


#: Copies :func:`_to_channels` reduces over: more than inductor unrolls into its consumer
#: (``torch._inductor.config.unroll_reductions_threshold``, 8).
_COPIES = 16


def _to_channels(pair_values: Tensor) -> Tensor:
    """``(C/2,)`` → ``(C, 1, 1)``: each pair's value on both its channels, as the maximum of
    identical copies (exact). A reduction too long to unroll, so inductor computes it into a
    ``(C,)`` buffer of its own instead of inlining the ``c // 2`` gather into its consumer."""
    copies = pair_values[:, None, None].expand(-1, 2, _COPIES)
    return copies.reshape(-1, _COPIES).amax(1)[:, None, None]
