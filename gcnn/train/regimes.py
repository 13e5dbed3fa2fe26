"""The three training regimes and the invariance loss.

- ``cnn``: a plain model trained with flip augmentation.
- ``cnn+inv``: a plain model plus ``λ · mean_b ‖f(x_b) − f(flip x_b)‖²`` on the logits (or on
  the penultimate features, the input of the last ``Linear``), switched on after a fraction of
  training.
- ``gcnn``: a flip-equivariant model (any registered flip architecture), trained like ``cnn``.
"""

from __future__ import annotations

from torch import Tensor, nn

from gcnn.models.flipify import FlipModelMixin


def is_flip_model(arch: str, model: nn.Module) -> bool:
    """Whether ``model`` (registered as ``arch``) is a flip GCNN: hand-written or escnn."""
    if isinstance(model, FlipModelMixin) or "flip" in arch:
        return True
    return any(type(m).__module__.split(".")[0] == "escnn" for m in model.modules())


def check_regime(regime: str, arch: str, model: nn.Module) -> None:
    """Raise ``ValueError`` if ``regime`` does not fit the architecture."""
    flip = is_flip_model(arch, model)
    if regime == "gcnn" and not flip:
        raise ValueError(f"regime gcnn needs a flip architecture (e.g. vgg11_flip), not {arch!r}")
    if regime in ("cnn", "cnn+inv") and flip:
        raise ValueError(
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


def invariance_loss(a: Tensor, b: Tensor) -> Tensor:
    """``mean_b ‖a_b − b_b‖²`` over the batch (squared L2 over all other dims), float32."""
    return (a.float() - b.float()).pow(2).flatten(1).sum(1).mean()
