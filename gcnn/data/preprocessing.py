"""How images are turned into model inputs: normalisation, resize interpolation and crop.

A :class:`Preprocessing` holds the mean and std (in 0–1 pixel units: ``x' = (x/255 − mean) /
std``), the resize interpolation and ``crop_pct`` (resize the short side to
``floor(size / crop_pct)``, then centre-crop ``size``). Presets:

=============  ===========================  ===========================  =========
preset         mean                         std                          crop_pct
=============  ===========================  ===========================  =========
``imagenet``   0.485, 0.456, 0.406          0.229, 0.224, 0.225          0.875
``inception``  0.5, 0.5, 0.5                0.5, 0.5, 0.5                0.875
``none``       0, 0, 0                      1, 1, 1                      1.0
=============  ===========================  ===========================  =========

``inception`` is the ``(x − 0.5) / 0.5`` of TF ports; ``(x·255 − 127) / 128`` is
``--mean 0.498 --std 0.502``. For ``timm:`` models the defaults come from the model's own
pretrained config (:func:`timm_preprocessing`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from torch import nn

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


@dataclass(frozen=True)
class Preprocessing:
    """Normalisation and eval-time resizing of images (see the module docstring)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    source: str = "imagenet"  # preset name, "timm:<name>", "dataset" or "custom"

    def resize_for(self, size: int) -> int:
        """Short side before the centre crop: ``floor(size / crop_pct)``."""
        return math.floor(size / self.crop_pct)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out


PRESETS: dict[str, Preprocessing] = {
    "imagenet": Preprocessing((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear", 0.875),
    "inception": Preprocessing((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear", 0.875, "inception"),
    "none": Preprocessing((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "bilinear", 1.0, "none"),
}


def timm_preprocessing(model: nn.Module, name: str) -> tuple[Preprocessing, int | None]:
    """The preprocessing of a timm model's pretrained config and its input width (or None)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    base = PRESETS["imagenet"]
    interpolation = cfg.get("interpolation", base.interpolation)
    pre = Preprocessing(
        mean=tuple(float(v) for v in cfg.get("mean", base.mean)),
        std=tuple(float(v) for v in cfg.get("std", base.std)),
        interpolation=interpolation if interpolation in INTERPOLATIONS else "bicubic",
        crop_pct=float(cfg.get("crop_pct", base.crop_pct)),
        source=f"timm:{name}",
    )
    size = cfg.get("input_size")
    return pre, (int(size[-1]) if size else None)


def resolve_preprocessing(
    default: Preprocessing,
    preset: str | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    interpolation: str | None = None,
    crop_pct: float | None = None,
) -> Preprocessing:
    """``default`` (or the named ``preset``) with every given field replaced.

    Raises ``ValueError`` for an unknown preset, a std ≤ 0, mean/std of different lengths, a
    crop_pct outside (0, 1] or an unknown interpolation.
    """
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(
                f"unknown preprocessing preset {preset!r}; choose {', '.join(PRESETS)}"
            )
        default = PRESETS[preset]
    changes: dict[str, Any] = {}
    if mean is not None:
        changes["mean"] = tuple(float(v) for v in mean)
    if std is not None:
        if any(v <= 0 for v in std):
            raise ValueError(f"--std must be positive, got {list(std)}")
        changes["std"] = tuple(float(v) for v in std)
    if interpolation is not None:
        if interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"--interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}"
            )
        changes["interpolation"] = interpolation
    if crop_pct is not None:
        if not 0 < crop_pct <= 1:
            raise ValueError(f"--crop-pct must lie in (0, 1], got {crop_pct}")
        changes["crop_pct"] = float(crop_pct)
    if changes and preset is None:
        changes["source"] = "custom"
    out = replace(default, **changes)
    if len(out.mean) != len(out.std):
        raise ValueError(f"mean {list(out.mean)} and std {list(out.std)} differ in length")
    return out
