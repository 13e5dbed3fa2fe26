"""Data for the analysis: normalised ``(x, y)`` batches held in memory, read without augmentation.

``--data`` of ``gcnn check`` accepts a dataset name (``cifar10``, ``fashion-mnist``, the
shipped ``cifar10-samples`` / ``fashion-mnist-samples``), a dataset root with ``train/`` and
``val/`` (or ``test/``) class folders, or a folder of images — flat (unlabelled) or with one
sub-folder per class. Class folders are labelled by :func:`gcnn.data.labels.class_indices`
(numeric names, ImageNet synsets in the standard order, a ``--class-map``, else sorted order).
Image folders are resized (``floor(size / crop_pct)``, the given interpolation), centre-cropped
and normalised by a :class:`~gcnn.data.preprocessing.Preprocessing` (default: ImageNet's).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.nn import functional as F
from torchvision import transforms

from gcnn.data.datasets import DATASETS, load_dataset, read_image, to_float
from gcnn.data.labels import class_indices
from gcnn.data.preprocessing import PRESETS, Preprocessing
from gcnn.data.tensor_dataset import ImageTensors

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
Batch = tuple[Tensor, Tensor | None]


@dataclass
class AnalysisData:
    """Statistics batches (training images) and evaluation batches (test images)."""

    name: str
    train: list[Batch]
    test: list[Batch]
    in_channels: int
    num_classes: int | None
    preprocessing: dict[str, object] | None = None  # what was applied (for report.json)
    labels: str = "dataset"  # how labels were assigned ("none" when unlabelled)


def _batches(x: Tensor, y: Tensor | None, batch_size: int) -> list[Batch]:
    return [
        (x[i : i + batch_size], None if y is None else y[i : i + batch_size])
        for i in range(0, len(x), batch_size)
    ]


def _resize(x: Tensor, size: int, mode: str = "bilinear") -> Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    smooth = mode in ("bilinear", "bicubic")
    return F.interpolate(
        x, size=(size, size), mode=mode, align_corners=False if smooth else None, antialias=smooth
    )


def _from_tensors(
    data: ImageTensors,
    size: int | None,
    n_train: int,
    n_test: int,
    bs: int,
    preprocessing: Preprocessing | None,
) -> AnalysisData:
    pre = preprocessing
    mean, std = (data.mean, data.std) if pre is None else (pre.mean, pre.std)
    mode = "bilinear" if pre is None else pre.interpolation

    def prepare(x: Tensor) -> Tensor:
        x = to_float(x, mean, std)
        return x if size is None else _resize(x, size, mode)

    applied = {
        "mean": list(mean),
        "std": list(std),
        "interpolation": mode if size is not None else None,
        "crop_pct": None,
        "source": "dataset" if pre is None else pre.source,
    }
    return AnalysisData(
        name=data.name,
        train=_batches(prepare(data.train_x[:n_train]), data.train_y[:n_train], bs),
        test=_batches(prepare(data.test_x[:n_test]), data.test_y[:n_test], bs),
        in_channels=data.in_channels,
        num_classes=data.num_classes,
        preprocessing=applied,
        labels="dataset",
    )


_MODES = {
    "bilinear": transforms.InterpolationMode.BILINEAR,
    "bicubic": transforms.InterpolationMode.BICUBIC,
    "nearest": transforms.InterpolationMode.NEAREST,
}


def eval_transform(size: int, resize: int, preprocessing: Preprocessing) -> transforms.Compose:
    """Resize the short side to ``resize``, centre-crop ``size``, normalise: ``(3, size, size)``."""
    return transforms.Compose(
        [
            transforms.Resize(resize, interpolation=_MODES[preprocessing.interpolation]),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(preprocessing.mean, preprocessing.std),
        ]
    )


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _read_folder(
    root: Path, tf: transforms.Compose, limit: int, class_map: dict[str, int] | None
) -> tuple[Tensor, Tensor | None, str]:
    """Up to ``limit`` images of ``root`` (a spread over its classes), their labels, and how
    the labels were assigned (``"none"`` for a flat folder)."""
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    if subdirs:
        index, how = class_indices([d.name for d in subdirs], class_map)
        items = [(f, index[d.name]) for d in subdirs for f in _images(d)]
        if not items:
            raise ValueError(f"no images found in {root} (class sub-folders are empty)")
        count = min(limit, len(items))
        # a spread of classes rather than the first class only
        idx = torch.linspace(0, len(items) - 1, count).round().long().unique()
        chosen = [items[int(i)] for i in idx]
        x = torch.stack([tf(read_image(str(f))) for f, _ in chosen])
        return x, torch.tensor([y for _, y in chosen]), how
    files = _images(root)[:limit]
    if not files:
        raise ValueError(f"no images found in {root} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return torch.stack([tf(read_image(str(f))) for f in files]), None, "none"


def load_analysis_data(
    data: str,
    *,
    root: str | Path | None = None,
    image_size: int | None = None,
    resize: int | None = None,
    num_train: int = 500,
    num_test: int = 1000,
    batch_size: int = 100,
    preprocessing: Preprocessing | None = None,
    class_map: dict[str, int] | None = None,
) -> AnalysisData:
    """Load ``data`` (see the module docstring) as in-memory batches ``(B, C, H, W)``.

    Tensor datasets keep their native size unless ``image_size`` is given (then a resize with
    the preprocessing's interpolation) and their own mean/std unless ``preprocessing`` is given.
    Image folders are resized (short side ``resize``, default ``floor(image_size / crop_pct)``)
    and centre-cropped to ``image_size`` (default 224), normalised by ``preprocessing``
    (default: the ``imagenet`` preset). A single folder serves as both the statistics and the
    evaluation set. ``class_map``: folder name → class index (see :mod:`gcnn.data.labels`).
    """
    if num_train < 1 or num_test < 1 or batch_size < 1:
        raise ValueError("--num-images, --num-eval and --batch-size must be positive")
    if data in DATASETS and data != "imagefolder":
        tensors = load_dataset(data, root)
        return _from_tensors(tensors, image_size, num_train, num_test, batch_size, preprocessing)
    path = Path(data)
    if not path.is_dir():
        raise FileNotFoundError(
            f"--data {data!r} is neither a dataset ({', '.join(d for d in DATASETS)}) nor a folder"
        )
    size = image_size or 224
    pre = preprocessing or PRESETS["imagenet"]
    resize = resize or pre.resize_for(size)
    tf = eval_transform(size, resize, pre)
    splits = [d for d in ("train", "val", "test") if (path / d).is_dir()]
    if "train" in splits and len(splits) > 1:
        train_x, train_y, how = _read_folder(path / "train", tf, num_train, class_map)
        test_x, test_y, _ = _read_folder(path / splits[1], tf, num_test, class_map)
    else:
        train_x, train_y, how = _read_folder(path, tf, max(num_train, num_test), class_map)
        test_x, test_y = train_x, train_y
    labelled = train_y is not None
    return AnalysisData(
        name=str(path),
        train=_batches(
            train_x[:num_train], None if not labelled else train_y[:num_train], batch_size
        ),
        test=_batches(
            test_x[:num_test], test_y if test_y is None else test_y[:num_test], batch_size
        ),
        in_channels=3,
        num_classes=None,
        preprocessing=pre.to_json() | {"resize": resize, "image_size": size},
        labels=how,
    )
