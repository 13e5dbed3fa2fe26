"""BatchNorm whose statistics and affine parameters are shared inside each channel pair."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FlipBatchNorm2d(nn.modules.batchnorm._BatchNorm):
    r"""BatchNorm on a regular field: one mean, variance, weight and bias per channel pair.

    Input and output ``(B, C, H, W)`` with ``C = 2·num_pairs``. Pair ``k`` is normalised with
    statistics over batch, height, width *and* both channels ``2k, 2k+1``, which is what makes
    it flip-equivariant in train mode too: ``g·x`` has the same pair statistics as ``x``.
    Parameters and buffers have shape ``(C/2,)``.

    No copy of the activations is made and the memory format is kept: a channels-first input
    is viewed as ``(B, C/2, 2H, W)``, a channels-last one as ``(B·H·W, C/2, 2)``, and both go
    through :func:`torch.nn.functional.batch_norm`.
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
    ) -> None:
        if num_channels % 2:
            raise ValueError(
                f"a regular field needs an even number of channels, got {num_channels}"
            )
        super().__init__(
            num_channels // 2,
            eps,
            momentum,
            affine,
            track_running_stats,
            device=device,
            dtype=dtype,
        )
        self.num_channels = num_channels

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
        b, c, h, w = x.shape
        channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        if channels_last:
            pairs = x.permute(0, 2, 3, 1).reshape(b * h * w, c // 2, 2)
        else:
            pairs = x.contiguous().view(b, c // 2, 2 * h, w)
        running = not self.training or self.track_running_stats
        y = F.batch_norm(
            pairs,
            self.running_mean if running else None,
            self.running_var if running else None,
            self.weight,
            self.bias,
            use_batch_stats,
            factor,
            self.eps,
        )
        if channels_last:
            return y.view(b, h, w, c).permute(0, 3, 1, 2)
        return y.view(b, c, h, w)

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
            bn.weight.copy_(self.weight.repeat_interleave(2))
            bn.bias.copy_(self.bias.repeat_interleave(2))
        if self.track_running_stats:
            bn.running_mean.copy_(self.running_mean.repeat_interleave(2))
            bn.running_var.copy_(self.running_var.repeat_interleave(2))
            bn.num_batches_tracked.copy_(self.num_batches_tracked)
        return bn.train(self.training)

    @classmethod
    @torch.no_grad()
    def from_batchnorm(cls, bn: nn.BatchNorm2d) -> FlipBatchNorm2d:
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
        )
        if bn.affine:
            flip.weight.copy_(bn.weight.view(-1, 2).mean(1))
            flip.bias.copy_(bn.bias.view(-1, 2).mean(1))
        if bn.track_running_stats:
            flip.running_mean.copy_(bn.running_mean.view(-1, 2).mean(1))
            flip.running_var.copy_(bn.running_var.view(-1, 2).mean(1))
            flip.num_batches_tracked.copy_(bn.num_batches_tracked)
        return flip.train(bn.training)

    def extra_repr(self) -> str:
        return f"{self.num_channels} (pairs={self.num_features}), eps={self.eps}, " + (
            f"momentum={self.momentum}, affine={self.affine}"
        )
