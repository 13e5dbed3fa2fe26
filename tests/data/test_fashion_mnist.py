"""Fashion-MNIST from Debian's dataset-fashion-mnist package (real data, no download)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis.extra import numpy as hnp

from gcnn.data import fashion_mnist, load_fashion_mnist, load_samples, read_idx
from gcnn.data.datasets import load_dataset


@pytest.fixture(scope="module")
def fmnist():
    return load_fashion_mnist()


def test_debian_files_load_padded_to_32(fmnist) -> None:
    assert fmnist.train_x.shape == (60000, 1, 32, 32) and fmnist.test_x.shape == (10000, 1, 32, 32)
    assert fmnist.train_x.dtype == torch.uint8
    assert torch.equal(torch.bincount(fmnist.train_y), torch.full((10,), 6000))
    border = torch.cat(
        [fmnist.train_x[..., :2, :].flatten(), fmnist.train_x[..., :, -2:].flatten()]
    )
    assert int(border.max()) == 0  # the 2-pixel zero frame


def test_debian_test_images_are_the_shipped_samples(fmnist) -> None:
    images, labels = load_samples("fashion-mnist")
    assert torch.equal(fmnist.test_x[:20, :, 2:30, 2:30], images)
    assert torch.equal(fmnist.test_y[:20], labels)
    # negative control: the training images are different images
    assert not torch.equal(fmnist.train_x[:20, :, 2:30, 2:30], images)


def test_normalisation_constants_match_the_padded_training_set(fmnist) -> None:
    x = fmnist.train_x.double() / 255
    assert abs(float(x.mean()) - fmnist.mean[0]) < 1e-3
    assert abs(float(x.std()) - fmnist.std[0]) < 1e-3


@given(hnp.arrays(np.uint8, hnp.array_shapes(min_dims=1, max_dims=3, max_side=9)))
def test_idx_round_trip(tmp_path_factory: pytest.TempPathFactory, a: np.ndarray) -> None:
    header = bytes([0, 0, 8, a.ndim]) + b"".join(d.to_bytes(4, "big") for d in a.shape)
    folder = tmp_path_factory.mktemp("idx")
    (folder / "a.idx").write_bytes(header + a.tobytes())
    (folder / "a.idx.gz").write_bytes(gzip.compress(header + a.tobytes()))
    np.testing.assert_array_equal(read_idx(folder / "a.idx"), a)
    np.testing.assert_array_equal(read_idx(folder / "a.idx.gz"), a)


def test_truncated_idx_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big") + b"abc")
    with pytest.raises(ValueError, match="holds 3 bytes"):
        read_idx(tmp_path / "bad")


def test_missing_data_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        load_dataset("fashion-mnist", tmp_path)


def test_torchvision_root_layout_is_found(tmp_path: Path) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in fashion_mnist.DEBIAN_DIR.glob("t10k-*"):
        (raw / f.name).write_bytes(f.read_bytes())
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):  # the test files serve as train too
        src = fashion_mnist.DEBIAN_DIR / f"t10k-{kind}.gz"
        (raw / f"train-{kind}.gz").write_bytes(src.read_bytes())
    assert fashion_mnist.find_fashion_mnist(tmp_path) == raw
    data = load_fashion_mnist(tmp_path)
    assert len(data.train_x) == 10000
