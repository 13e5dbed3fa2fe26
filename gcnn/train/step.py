"""One optimizer step: the regime's loss on a batch, and the running sums of an epoch."""

from __future__ import annotations

import torch
from torch import nn

from gcnn.train.config import TrainConfig
from gcnn.train.regimes import PenultimateFeatures, invariance_loss
from gcnn.train.schedule import lr_factor
from gcnn.train.start import Run

__all__ = ["Meter", "regime_loss", "train_step"]


def regime_loss(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    use_inv: bool,
    features: PenultimateFeatures | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, cross-entropy, invariance loss, logits (B, K))`` of one batch ``x (B, C, H, W)``.

    With ``use_inv``, ``x`` and ``flip x`` go through the net as one batch of ``2B`` and
    ``loss = CE(f(x), y) + λ · D(g(x), g(flip x))`` with ``g`` the logits or the penultimate
    ``features`` and ``D`` the scale-free :func:`~gcnn.train.regimes.invariance_loss`;
    otherwise ``loss = CE(f(x), y)``.
    """
    if use_inv:
        logits, logits_flipped = net(torch.cat([x, x.flip(-1)])).chunk(2)
        if features is not None:
            assert features.value is not None
            a, b = features.value.chunk(2)
        else:
            a, b = logits, logits_flipped
        inv = invariance_loss(a, b, cfg.inv_target)
    else:
        logits = net(x)
        inv = torch.zeros((), device=x.device)
    ce = nn.functional.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
    loss = ce + cfg.inv_lambda * inv if use_inv else ce
    return loss, ce, inv, logits


class Meter:
    """Running sums of one epoch (kept on the device; synced only when read):
    ``[Σ loss·n, Σ inv·n, correct, images, batches]``."""

    def __init__(self, device: torch.device, values: list[float] | None = None) -> None:
        self.sums = torch.tensor(values or [0.0] * 5, dtype=torch.float64, device=device)

    def add(self, loss: torch.Tensor, inv: torch.Tensor, correct: torch.Tensor, n: int) -> None:
        self.sums += torch.stack(
            [loss.detach().double() * n, inv.detach().double() * n, correct.double(),
             torch.tensor(float(n), dtype=torch.float64, device=self.sums.device),
             torch.tensor(1.0, dtype=torch.float64, device=self.sums.device)]
        )  # fmt: skip

    def values(self) -> list[float]:
        return self.sums.tolist()


def train_step(run: Run, x: torch.Tensor, y: torch.Tensor, meter: Meter) -> None:
    """One optimizer step on the batch ``x (B, C, H, W)``, ``y (B,)`` at ``run.step``."""
    cfg = run.cfg
    for group in run.optimizer.param_groups:
        group["lr"] = cfg.lr * lr_factor(run.step, run.total_steps, run.warmup_steps)
    use_inv = cfg.regime == "cnn+inv" and run.step >= run.inv_start_step and cfg.inv_lambda > 0
    with run.autocast:
        loss, ce, inv, logits = regime_loss(run.net, x, y, cfg, use_inv, run.features)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    meter.add(ce, inv, (logits.argmax(1) == y).sum(), len(y))
    run.step += 1
