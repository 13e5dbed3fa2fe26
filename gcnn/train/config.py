"""The training configuration: one dataclass, recorded in every checkpoint's sidecar."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

REGIMES: tuple[str, ...] = ("cnn", "cnn+inv", "gcnn")


@dataclass
class TrainConfig:
    """Everything that defines a training run except the seed.

    Defaults are the published VGG11 recipe: SGD (Nesterov) lr 0.08, momentum 0.9, weight
    decay 5e-4, batch 500, linear warm-up over 5 % of the steps (5 of 100 epochs) then linear
    decay to 0, random crop (pad 4) and horizontal flip.
    """

    arch: str = "vgg11"
    regime: str = "cnn"
    data: str = "fashion-mnist"
    data_root: str | None = None
    download: bool = False
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int = 30
    batch_size: int = 500
    lr: float = 0.08
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    warmup: float = 0.05  # fraction of all steps
    label_smoothing: float = 0.0
    flip_augment: bool = True
    crop_pad: int = 4
    # λ of the scale-free (Jensen–Shannon) invariance loss: a flip-augmented F-MNIST CNN sits at
    # JS ≈ 0.008 nats, so λ = 10 makes the term a fraction of the final cross-entropy
    inv_lambda: float = 10.0
    inv_start: float = 0.2  # fraction of all steps before the invariance loss switches on
    inv_target: str = "logits"  # or "features" (input of the last Linear layer)
    train_subset: int | None = None
    test_subset: int | None = None
    image_size: int = 224  # ImageFolder only
    resize: int | None = None  # ImageFolder only
    random_resized_crop: bool = False  # ImageFolder only
    workers: int = 8  # ImageFolder only
    amp: bool = True  # bf16 autocast, CUDA only
    channels_last: bool = True  # CUDA only
    compile: bool = False
    eval_every: int = 1  # epochs; 0 = only at the end
    checkpoint_every: int = 0  # steps; 0 = at the end of every epoch only
    device: str | None = None  # None: cuda if available, else cpu

    def __post_init__(self) -> None:
        if self.regime not in REGIMES:
            raise ValueError(f"unknown regime {self.regime!r}; choose one of {', '.join(REGIMES)}")
        if self.inv_target not in ("logits", "features"):
            raise ValueError(f"--inv-target must be logits or features, not {self.inv_target!r}")
        checks = {
            "epochs": self.epochs >= 1,
            "batch size": self.batch_size >= 1,
            "lr": self.lr > 0,
            "warm-up fraction": 0 <= self.warmup < 1,
            "invariance start fraction": 0 <= self.inv_start <= 1,
            "λ": self.inv_lambda >= 0,
            "label smoothing": 0 <= self.label_smoothing < 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid {', '.join(bad)} in the training configuration")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
