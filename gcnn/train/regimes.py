"""The three training regimes and the invariance loss.

- ``cnn``: a plain model trained with flip augmentation.
- ``cnn+inv``: a plain model plus ``λ · D(g(x), g(flip x))`` (see :func:`invariance_loss`), with
  ``g`` the logits or the penultimate features (the input of the last ``Linear``), switched on
  after a fraction of training.
- ``gcnn``: a flip-equivariant model (any registered flip architecture), trained like ``cnn``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from gcnn.errors import TrainingCollapsed, UsageError
from gcnn.models.flipify import FlipModelMixin
from gcnn.models.registry import is_flip_arch

__all__ = [
    "PenultimateFeatures",
    "TrainingCollapsed",
    "check_regime",
    "collapse",
    "invariance_loss",
    "is_flip_model",
    "last_linear",
]


def is_flip_model(arch: str, model: nn.Module) -> bool:
    """Whether ``model`` (registered as ``arch``) is a flip GCNN: hand-written or escnn."""
    if isinstance(model, FlipModelMixin) or is_flip_arch(arch):
        return True
    return any(type(m).__module__.split(".")[0] == "escnn" for m in model.modules())


def check_regime(regime: str, arch: str, model: nn.Module) -> None:
    """Raise :class:`~gcnn.errors.UsageError` if ``regime`` does not fit the architecture."""
    flip = is_flip_model(arch, model)
    if regime == "gcnn" and not flip:
        raise UsageError(f"regime gcnn needs a flip architecture (e.g. vgg11_flip), not {arch!r}")
    if regime in ("cnn", "cnn+inv") and flip:
        raise UsageError(
            f"regime {regime} trains a plain CNN; {arch!r} is a flip model (use --regime gcnn)"
        )


def last_linear(model: nn.Module) -> nn.Module:
    """The last ``nn.Linear`` (or linear-like ``classifier``/``fc``) module of ``model``."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1]
    for name in ("classifier", "fc", "head"):
        if isinstance(getattr(model, name, None), nn.Module):
            return getattr(model, name)
    raise ValueError(f"cannot find the last linear layer of {type(model).__name__}")


class PenultimateFeatures:
    """Records the input of the last linear layer (``(B, F)``) on every forward pass."""

    def __init__(self, model: nn.Module) -> None:
        self.value: Tensor | None = None
        self.handle = last_linear(model).register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        self.value = inputs[0]

    def remove(self) -> None:
        self.handle.remove()


def invariance_loss(a: Tensor, b: Tensor, target: str = "logits") -> Tensor:
    r"""Scale-free distance between the outputs of ``x`` and ``flip x`` (float32 scalar).

    ``a``, ``b``: ``(B, K)`` logits (or ``(B, F, ...)`` features) of ``x`` and of ``flip x``.

    * ``target="logits"``: the Jensen–Shannon divergence of the predicted distributions,
      ``mean_b JS(p_b, q_b)``, ``p = softmax(a)``, ``q = softmax(b)``,
      ``JS(p, q) = ½ KL(p ‖ m) + ½ KL(q ‖ m)``, ``m = ½(p + q)``, in nats. It is 0 exactly when
      the two predictions agree, at most ``ln 2`` whatever the number of classes, symmetric in
      ``x`` and ``flip x``, and unchanged by adding a constant to every logit — so ``λ`` means
      the same for any head, and the loss cannot be lowered by shrinking the logits.
    * ``target="features"``: the relative squared distance
      ``Σ_b ‖a_b − b_b‖² / Σ_b ½(‖a_b‖² + ‖b_b‖²)`` (in [0, 4]), unchanged by a global rescaling
      of the features, so it cannot be lowered by shrinking them either.

    The earlier form, ``mean_b ‖a_b − b_b‖²``, grew with the logit scale and the number of
    outputs: a fixed ``λ`` meant different things for different nets, and its cheapest minimum was
    to shrink every output towards a constant (a collapsed net).
    """
    a, b = a.float().flatten(1), b.float().flatten(1)
    if target == "features":
        num = (a - b).pow(2).sum()
        den = 0.5 * (a.pow(2).sum() + b.pow(2).sum())
        return num / den.clamp_min(1e-12)
    if target != "logits":
        raise ValueError(f"invariance loss target must be logits or features, not {target!r}")
    log_p, log_q = a.log_softmax(1), b.log_softmax(1)
    log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
    kl_pm = (log_p.exp() * (log_p - log_m)).sum(1)
    kl_qm = (log_q.exp() * (log_q - log_m)).sum(1)
    return (0.5 * (kl_pm + kl_qm)).mean().clamp_min(0)


def collapse(history: list[dict], num_classes: int, inv_start_epoch: int) -> str | None:
    """Why the run in ``history`` (``log.jsonl`` rows) has collapsed, or ``None``.

    A run has *learned* when some epoch that ended before the invariance loss switched on
    (epochs ``< inv_start_epoch``, counted from 1) reached twice the chance accuracy
    ``100 / K``. It has *collapsed* when, after that, an epoch that ends with the loss on has a
    training cross-entropy within 2 % of ``ln K`` (the uniform prediction) or a training or test
    accuracy at most 1.2× chance. A run that never learned cannot collapse: too little data or
    too few epochs is not a collapse.
    """
    chance = 100.0 / num_classes
    before = [r for r in history if r["epoch"] < inv_start_epoch]
    if not before or max(r["train_acc"] for r in before) < 2 * chance:
        return None
    uniform = math.log(num_classes)
    for row in history:
        if row["epoch"] < inv_start_epoch:
            continue
        where = f"epoch {row['epoch']} (invariance loss on since epoch {inv_start_epoch})"
        if row["train_loss"] >= 0.98 * uniform:
            return (
                f"collapsed at {where}: training loss {row['train_loss']:.4f} sits at "
                f"ln({num_classes}) = {uniform:.4f}, the uniform prediction; lower --inv-lambda"
            )
        accuracies = [row["train_acc"], row.get("test_acc", 100.0)]
        if min(accuracies) <= 1.2 * chance:
            return (
                f"collapsed at {where}: accuracy {min(accuracies):.2f} % is at chance "
                f"({chance:.1f} %) after {max(r['train_acc'] for r in before):.2f} % before; "
                "lower --inv-lambda"
            )
    return None
