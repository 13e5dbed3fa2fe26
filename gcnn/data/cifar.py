"""CIFAR-10 from a ``cifar-10-batches-py`` folder (genuine, rebuilt or partial).

torchvision's ``CIFAR10`` checks pinned md5 sums and rejects rebuilt or partial folders, so the
batch files are read here directly with a numpy-only unpickler
(:mod:`gcnn.data.safe_pickle`). ``download=True`` fetches the genuine archive through torchvision.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from gcnn.data.safe_pickle import load_numpy_pickle
from gcnn.data.samples import CIFAR10_CLASSES
from gcnn.data.tensor_dataset import ImageTensors
from gcnn.errors import DataError, DataNotFoundError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
FOLDER = "cifar-10-batches-py"


def _find_folder(root: Path) -> Path | None:
    for candidate in (root / FOLDER, root):
        if (candidate / "test_batch").is_file():
            return candidate
    return None


_FIX = "re-extract the genuine cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html)"


def _unpickle(path: Path) -> object:
    """The batch at ``path``; every failure is a :class:`DataError` naming the file."""
    try:
        return load_numpy_pickle(path)
    except pickle.UnpicklingError as err:
        if "refusing to load global" in str(err):
            name = str(err).split("global ", 1)[1].split(":")[0]
            raise DataError(
                f"{path} carries code (it calls {name}), which gcnn never runs: it is not a "
                f"CIFAR-10 batch; delete it and {_FIX}"
            ) from err
        raise DataError(f"{path} is a corrupt pickle ({err}): {_FIX}") from err
    except Exception as err:  # a damaged pickle can fail in many ways
        reason = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        raise DataError(f"{path} is truncated or corrupt ({reason}): {_FIX}") from err


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    if not isinstance(batch, dict) or "data" not in batch:
        raise DataError(f"{path} is not a CIFAR-10 batch (no 'data' entry): {_FIX}")
    try:
        data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch.get("labels", batch.get("fine_labels")), dtype=np.int64)
    except (ValueError, TypeError) as err:
        raise DataError(
            f"{path} does not hold 3×32×32 uint8 images with labels ({err}): {_FIX}"
        ) from err
    if labels.shape != (data.shape[0],):
        raise DataError(
            f"{path}: {data.shape[0]} images but labels of shape {labels.shape}: {_FIX}"
        )
    return data, labels


def read_cifar10_folder(folder: str | Path) -> ImageTensors:
    """Read ``test_batch`` and whichever ``data_batch_1..5`` exist in ``folder``.

    Returns uint8 ``(N, 3, 32, 32)`` images. A partial folder (fewer train batches) is fine.
    """
    folder = Path(folder)
    train_files = sorted(folder.glob("data_batch_*"))
    if not train_files or not (folder / "test_batch").is_file():
        raise DataNotFoundError(f"{folder} needs test_batch and at least one data_batch_*")
    parts = [_read_batch(f) for f in train_files]
    test_x, test_y = _read_batch(folder / "test_batch")
    return ImageTensors(
        name="cifar10",
        train_x=torch.from_numpy(np.concatenate([p[0] for p in parts])),
        train_y=torch.from_numpy(np.concatenate([p[1] for p in parts])),
        test_x=torch.from_numpy(test_x),
        test_y=torch.from_numpy(test_y),
        num_classes=10,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        classes=CIFAR10_CLASSES,
        root=str(folder.resolve()),
    )


def load_cifar10(root: str | Path, download: bool = False) -> ImageTensors:
    """CIFAR-10 from ``root`` (holding ``cifar-10-batches-py``, or that folder itself)."""
    root = Path(root)
    folder = _find_folder(root)
    if folder is None and download:
        from torchvision.datasets import CIFAR10

        CIFAR10(str(root), train=True, download=True)
        folder = _find_folder(root)
    if folder is None:
        raise DataNotFoundError(
            f"CIFAR-10 not found under {root}: expected {root / FOLDER}/test_batch and "
            "data_batch_*; pass --download (needs a network) or copy the extracted "
            "cifar-10-python.tar.gz there (https://www.cs.toronto.edu/~kriz/cifar.html)"
        )
    return read_cifar10_folder(folder)
