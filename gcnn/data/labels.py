"""Class indices of image folders: numeric folders, ImageNet synsets, a class map, or none.

``class_indices(names)`` maps class sub-folder names to the indices the model was trained with:

* a ``class_map`` (JSON object ``{"folder name": index}``) decides when given;
* folders named by integers (``0``, ``1``, ``17``) are those indices;
* ImageNet synset folders (``n01440764``, …) get their index in the standard 1000-class order
  (the list shipped as ``gcnn/data/imagenet_synsets.txt``, as in torchvision and timm), so a
  subset of the validation set keeps the model's labels;
* anything else: the sorted folder index (torchvision's ``ImageFolder`` order).
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

SYNSETS_FILE = Path(__file__).with_name("imagenet_synsets.txt")
_SYNSET = re.compile(r"^n\d{8}$")


@cache
def imagenet_synsets() -> tuple[str, ...]:
    """The 1000 ImageNet-1k synsets in the standard class order."""
    return tuple(SYNSETS_FILE.read_text().split())


def read_class_map(path: str | Path) -> dict[str, int]:
    """A JSON object ``{folder name: class index}`` (``ValueError`` when it is not one)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--class-map {path} does not exist")
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"--class-map {path} is not JSON: {err}") from err
    if not isinstance(value, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value.values()
    ):
        raise ValueError(
            f"--class-map {path} must be a JSON object of folder name → class index (int ≥ 0)"
        )
    return {str(k): int(v) for k, v in value.items()}


def class_indices(
    names: list[str], class_map: dict[str, int] | None = None
) -> tuple[dict[str, int], str]:
    """``({folder: index}, how)`` for class folders ``names`` (see the module docstring)."""
    names = sorted(names)
    if class_map is not None:
        missing = [n for n in names if n not in class_map]
        if missing:
            raise ValueError(
                f"--class-map has no index for the folders {missing[:5]}"
                + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            )
        return {n: class_map[n] for n in names}, "class map"
    if all(n.isdigit() for n in names):
        return {n: int(n) for n in names}, "numeric folders"
    if all(_SYNSET.match(n) for n in names):
        index = {s: i for i, s in enumerate(imagenet_synsets())}
        unknown = [n for n in names if n not in index]
        if unknown:
            raise ValueError(
                f"folders {unknown[:5]} look like synsets but are not ImageNet-1k classes; "
                "pass --class-map"
            )
        return {n: index[n] for n in names}, "imagenet synsets"
    return {n: i for i, n in enumerate(names)}, "sorted folder names"
