"""Fashion-MNIST from IDX files: a torchvision root, or Debian's ``dataset-fashion-mnist``.

Images are zero-padded from 28×28 to 32×32 (2 pixels each side) so the CIFAR VGG11 is exact.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from gcnn.data.tensor_dataset import ImageTensors

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
#: Statistics of the zero-padded 32×32 training images.
FASHION_MNIST_MEAN = (0.2190,)
FASHION_MNIST_STD = (0.3318,)
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
INSTALL_HINT = (
    "install Debian's copy (apt-get update && apt-get install -y dataset-fashion-mnist, "
    f"files in {DEBIAN_DIR}), pass --data-root to a torchvision root (FashionMNIST/raw/), "
    "or pass --download (needs a network)"
)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally ``.gz``): unsigned-byte arrays of any rank."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {data.size} bytes")
    return data.reshape(dims)


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def find_fashion_mnist(root: str | Path | None) -> Path | None:
    """First folder with all four IDX files: ``root/FashionMNIST/raw``, ``root``, Debian's."""
    candidates = [] if root is None else [Path(root) / "FashionMNIST" / "raw", Path(root)]
    for folder in [*candidates, DEBIAN_DIR]:
        if all(_find_file(folder, stem) for stem in _FILES.values()):
            return folder
    return None


def load_fashion_mnist(root: str | Path | None = None, download: bool = False) -> ImageTensors:
    """Fashion-MNIST as uint8 ``(N, 1, 32, 32)`` (60 000 train, 10 000 test)."""
    folder = find_fashion_mnist(root)
    if folder is None and download:
        if root is None:
            raise FileNotFoundError("--download needs --data-root (where to put the files)")
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(root), train=True, download=True)
        folder = find_fashion_mnist(root)
    if folder is None:
        where = f"under {root} or " if root is not None else ""
        raise FileNotFoundError(f"Fashion-MNIST not found {where}in {DEBIAN_DIR}: {INSTALL_HINT}")
    arrays = {key: read_idx(_find_file(folder, stem)) for key, stem in _FILES.items()}  # type: ignore[arg-type]

    def images(a: np.ndarray) -> torch.Tensor:
        return F.pad(torch.from_numpy(a.copy()).unsqueeze(1), (2, 2, 2, 2))

    return ImageTensors(
        name="fashion-mnist",
        train_x=images(arrays["train_x"]),
        train_y=torch.from_numpy(arrays["train_y"].astype(np.int64)),
        test_x=images(arrays["test_x"]),
        test_y=torch.from_numpy(arrays["test_y"].astype(np.int64)),
        num_classes=10,
        mean=FASHION_MNIST_MEAN,
        std=FASHION_MNIST_STD,
        classes=FASHION_MNIST_CLASSES,
    )
