"""Any ``ImageFolder`` tree (ImageNet layout: ``root/train/<class>/*.jpg``, ``root/val/<class>/*``).

Images stream from disk through a ``DataLoader`` with workers as ``uint8`` tensors; they are
normalised on the device. Training: resize the short side to ``resize`` then a random
``image_size`` crop (or ``RandomResizedCrop`` with ``random_resized_crop=True``) and a random
horizontal flip; evaluation: resize then centre crop.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torchvision import datasets, transforms

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ImageFolderData:
    """The train and validation ``ImageFolder`` datasets of one tree."""

    name: str
    train: datasets.ImageFolder
    test: datasets.ImageFolder
    num_classes: int
    image_size: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    in_channels: int = 3

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.train.classes)


def _split_dir(root: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(
        f"ImageFolder tree {root} needs one of the sub-folders {', '.join(names)} "
        "(layout root/train/<class>/<image>, root/val/<class>/<image>)"
    )


def load_imagefolder(
    root: str | Path,
    image_size: int = 224,
    resize: int | None = None,
    random_resized_crop: bool = False,
    flip: bool = True,
) -> ImageFolderData:
    """The ``train`` and ``val`` (or ``test``) splits of the tree at ``root``.

    ``resize`` defaults to ``round(image_size · 256 / 224)`` (the ImageNet convention).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"ImageFolder root {root} does not exist")
    train_dir, test_dir = _split_dir(root, ("train",)), _split_dir(root, ("val", "test"))
    resize = resize or round(image_size * 256 / 224)
    crop: list[transforms.Transform | object]
    if random_resized_crop:
        crop = [transforms.RandomResizedCrop(image_size)]
    else:
        crop = [transforms.Resize(resize), transforms.RandomCrop(image_size)]
    train_tf = transforms.Compose(
        [*crop, *([transforms.RandomHorizontalFlip()] if flip else []), transforms.PILToTensor()]
    )
    test_tf = transforms.Compose(
        [transforms.Resize(resize), transforms.CenterCrop(image_size), transforms.PILToTensor()]
    )
    train = datasets.ImageFolder(str(train_dir), transform=train_tf)
    test = datasets.ImageFolder(str(test_dir), transform=test_tf)
    if train.classes != test.classes:
        raise ValueError(f"{root}: train and val/test class folders differ")
    return ImageFolderData(
        name=f"imagefolder:{root}",
        train=train,
        test=test,
        num_classes=len(train.classes),
        image_size=image_size,
    )
