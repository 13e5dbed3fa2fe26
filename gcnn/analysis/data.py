"""Data for the analysis: normalised ``(x, y)`` batches held in memory, read without augmentation.

``--data`` of ``gcnn check`` accepts a dataset name (``cifar10``, ``fashion-mnist``, the
shipped ``cifar10-samples`` / ``fashion-mnist-samples``), a dataset root with ``train/`` and
``val/`` (or ``test/``) class folders, or a folder of images — flat (unlabelled) or with one
sub-folder per class (labels = sorted folder index, torchvision's ``ImageFolder`` order).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.nn import functional as F
from torchvision import datasets, transforms

from gcnn.data.datasets import DATASETS, load_dataset, read_image, to_float
from gcnn.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD
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


def _batches(x: Tensor, y: Tensor | None, batch_size: int) -> list[Batch]:
    return [
        (x[i : i + batch_size], None if y is None else y[i : i + batch_size])
        for i in range(0, len(x), batch_size)
    ]


def _resize(x: Tensor, size: int) -> Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def _from_tensors(
    data: ImageTensors, size: int | None, n_train: int, n_test: int, bs: int
) -> AnalysisData:
    def prepare(x: Tensor) -> Tensor:
        x = to_float(x, data.mean, data.std)
        return x if size is None else _resize(x, size)

    return AnalysisData(
        name=data.name,
        train=_batches(prepare(data.train_x[:n_train]), data.train_y[:n_train], bs),
        test=_batches(prepare(data.test_x[:n_test]), data.test_y[:n_test], bs),
        in_channels=data.in_channels,
        num_classes=data.num_classes,
    )


def _eval_transform(size: int, resize: int | None) -> transforms.Compose:
    return transforms.Compose(
        [
            transforms.Resize(resize or size),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def _read_folder(
    root: Path, size: int, resize: int | None, limit: int
) -> tuple[Tensor, Tensor | None]:
    tf = _eval_transform(size, resize)
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    if subdirs:
        folder = datasets.ImageFolder(str(root), transform=tf, loader=read_image)
        if len(folder) == 0:
            raise ValueError(f"no images found in {root} (class sub-folders are empty)")
        count = min(limit, len(folder))
        # a spread of classes rather than the first class only
        idx = torch.linspace(0, len(folder) - 1, count).round().long().unique()
        items = [folder[int(i)] for i in idx]
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise ValueError(f"no images found in {root} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return torch.stack([tf(read_image(str(f))) for f in files]), None


def load_analysis_data(
    data: str,
    *,
    root: str | Path | None = None,
    image_size: int | None = None,
    resize: int | None = None,
    num_train: int = 500,
    num_test: int = 1000,
    batch_size: int = 100,
) -> AnalysisData:
    """Load ``data`` (see the module docstring) as in-memory batches.

    Tensor datasets keep their native size unless ``image_size`` is given (then bilinear
    resize); image folders are resized (short side ``resize``, default ``image_size``) and
    centre-cropped to ``image_size`` (default 224) with ImageNet normalisation. A single folder
    serves as both the statistics and the evaluation set.
    """
    if num_train < 1 or num_test < 1 or batch_size < 1:
        raise ValueError("--num-images, --num-eval and --batch-size must be positive")
    if data in DATASETS and data != "imagefolder":
        tensors = load_dataset(data, root)
        return _from_tensors(tensors, image_size, num_train, num_test, batch_size)
    path = Path(data)
    if not path.is_dir():
        raise FileNotFoundError(
            f"--data {data!r} is neither a dataset ({', '.join(d for d in DATASETS)}) nor a folder"
        )
    size = image_size or 224
    splits = [d for d in ("train", "val", "test") if (path / d).is_dir()]
    if "train" in splits and len(splits) > 1:
        train_x, train_y = _read_folder(path / "train", size, resize, num_train)
        test_x, test_y = _read_folder(path / splits[1], size, resize, num_test)
    else:
        train_x, train_y = _read_folder(path, size, resize, max(num_train, num_test))
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
    )
