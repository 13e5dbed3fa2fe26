"""The training configuration: one dataclass, recorded in every checkpoint's sidecar."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from gcnn.errors import UsageError
from gcnn.nn.isotypic import CONV_PATHS

REGIMES: tuple[str, ...] = ("cnn", "cnn+inv", "gcnn")

#: Settings that may change between a run and its resumption: they change neither the weights
#: nor the data (``data_root`` is compared through the data identity, the folder it resolves to).
RESUMABLE_CHANGES = frozenset(
    {
        "device", "compile", "conv_path", "workers", "eval_every", "checkpoint_every",
        "download", "data_root",
    }
)  # fmt: skip


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
    # how FlipConv2d computes (gcnn.nn.set_conv_path): "auto", "static", "isotypic", "regular"; the
    # same function and free weights on every path, so a run may resume on another one
    conv_path: str = "auto"
    eval_every: int = 1  # epochs; 0 = only at the end
    checkpoint_every: int = 0  # steps; 0 = at the end of every epoch only
    device: str | None = None  # None: cuda if available, else cpu

    def __post_init__(self) -> None:
        if self.regime not in REGIMES:
            raise UsageError(
                f"unknown regime {self.regime!r}: --regime takes one of {', '.join(REGIMES)}"
            )
        if self.inv_target not in ("logits", "features"):
            raise UsageError(f"--inv-target must be logits or features, not {self.inv_target!r}")
        if self.conv_path not in CONV_PATHS:
            renamed = " (the measured 'tuned' path is now 'auto', the default)"
            raise UsageError(
                f"--conv-path must be one of {', '.join(CONV_PATHS)}, not {self.conv_path!r}"
                + (renamed if self.conv_path == "tuned" else "")
            )
        rules = {  # field: (valid, rule)
            "epochs": (self.epochs >= 1, "≥ 1"),
            "batch_size": (self.batch_size >= 1, "≥ 1"),
            "lr": (self.lr > 0, "> 0"),  # +inf passes: such a run stops as diverged
            "momentum": (math.isfinite(self.momentum) and self.momentum >= 0, "≥ 0"),
            "weight_decay": (math.isfinite(self.weight_decay) and self.weight_decay >= 0, "≥ 0"),
            "warmup": (0 <= self.warmup < 1, "a fraction in [0, 1)"),
            "inv_start": (0 <= self.inv_start <= 1, "a fraction in [0, 1]"),
            "inv_lambda": (math.isfinite(self.inv_lambda) and self.inv_lambda >= 0, "≥ 0"),
            "label_smoothing": (0 <= self.label_smoothing < 1, "in [0, 1)"),
            "crop_pad": (self.crop_pad >= 0, "≥ 0"),
            "image_size": (self.image_size >= 1, "≥ 1"),
            "resize": (self.resize is None or self.resize >= 1, "≥ 1"),
            "workers": (self.workers >= 0, "≥ 0"),
            "eval_every": (self.eval_every >= 0, "≥ 0 epochs (0: at the end only)"),
            "checkpoint_every": (self.checkpoint_every >= 0, "≥ 0 steps (0: at epoch ends)"),
            "train_subset": (self.train_subset is None or self.train_subset >= 1, "≥ 1"),
            "test_subset": (self.test_subset is None or self.test_subset >= 1, "≥ 1"),
        }
        bad = [
            f"--{name.replace('_', '-')} {getattr(self, name)} (must be {rule})"
            for name, (valid, rule) in rules.items()
            if not valid
        ]
        if bad:
            raise UsageError(f"invalid {'; '.join(bad)} in the training configuration")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "the configuration") -> TrainConfig:
        """The config of a recipe's or sidecar's ``config`` dict; unknown keys are refused.

        Keys missing from ``values`` (settings added after it was written) take their defaults.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(
                f"{source} has unknown training settings: {', '.join(unknown)} "
                f"(known: {', '.join(sorted(known))})"
            )
        return cls(**values)


def config_differences(stored: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    """Every setting (outside :data:`RESUMABLE_CHANGES`) whose value differs, as
    ``"lr: 0.08 in the run, 0.1 now"``; settings missing from ``stored`` are not compared."""
    out = []
    for key in sorted(set(stored) | set(requested)):
        if key in RESUMABLE_CHANGES or key not in stored:
            continue
        if stored[key] != requested.get(key):
            out.append(f"{key}: {stored[key]!r} in the run, {requested.get(key)!r} now")
    return out
