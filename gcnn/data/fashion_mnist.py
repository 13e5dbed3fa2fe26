"""Fashion-MNIST from IDX files: a torchvision root, or Debian's ``dataset-fashion-mnist``.

Images are zero-padded from 28×28 to 32×32 (2 pixels each side) so the CIFAR VGG11 is exact.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from gcnn.data.tensor_dataset import ImageTensors
from gcnn.errors import DataError, DataNotFoundError

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
    """Read an IDX file (optionally ``.gz``): unsigned-byte arrays of any rank.

    A truncated or corrupt file raises :class:`~gcnn.errors.DataError` naming it.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    fix = "replace the file (reinstall dataset-fashion-mnist, or download it again)"
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (EOFError, OSError, zlib.error) as err:  # truncated or corrupt gzip stream
        raise DataError(f"{path} is truncated or corrupt ({err}): {fix}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file: {fix}")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path} is truncated inside its IDX header: {fix}")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path}: header says {dims} but holds {data.size} bytes: {fix}")
    return data.reshape(dims)


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def find_fashion_mnist(root: str | Path | None) -> Path | None:
    """First folder with all four IDX files: ``root/FashionMNIST/raw`` or ``root`` when ``root``
    is given (never another folder: a wrong root must not fall back silently), else Debian's."""
    candidates = [DEBIAN_DIR] if root is None else [Path(root) / "FashionMNIST" / "raw", Path(root)]
    for folder in candidates:
        if all(_find_file(folder, stem) for stem in _FILES.values()):
            return folder
    return None


def load_fashion_mnist(root: str | Path | None = None, download: bool = False) -> ImageTensors:
    """Fashion-MNIST as uint8 ``(N, 1, 32, 32)`` (60 000 train, 10 000 test)."""
    folder = find_fashion_mnist(root)
    if folder is None and download:
        if root is None:
            raise DataNotFoundError("--download needs --data-root (where to put the files)")
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(root), train=True, download=True)
        folder = find_fashion_mnist(root)
    if folder is None and root is not None:
        raise DataNotFoundError(
            f"Fashion-MNIST not found under --data-root {root} (looked in "
            f"{Path(root) / 'FashionMNIST' / 'raw'} and {root} for the four IDX files): fix the "
            f"path, drop --data-root to use Debian's copy in {DEBIAN_DIR}, or {INSTALL_HINT}"
        )
    if folder is None:
        raise DataNotFoundError(f"Fashion-MNIST not found in {DEBIAN_DIR}: {INSTALL_HINT}")
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
        root=str(folder.resolve()),
    )
