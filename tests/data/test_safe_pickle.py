"""The numpy-only unpickler and the CIFAR-10 folder reader, on the shipped real CIFAR images."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gcnn.data import load_cifar10, load_numpy_pickle, load_samples, read_cifar10_folder


def write_cifar_folder(folder: Path, images: torch.Tensor, labels: torch.Tensor, *,
                       train_batches: int, bytes_keys: bool, protocol: int) -> None:  # fmt: skip
    """A rebuilt ``cifar-10-batches-py``: the images split over ``train_batches`` files + test."""
    folder.mkdir(parents=True)
    flat = images.numpy().reshape(len(images), -1)
    key = (lambda k: k.encode()) if bytes_keys else (lambda k: k)
    chunks = np.array_split(np.arange(len(images)), train_batches)
    for i, idx in enumerate(chunks, start=1):
        batch = {key("data"): flat[idx], key("labels"): labels[idx].tolist()}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=protocol))
    test = {key("data"): flat[:7], key("labels"): labels[:7].tolist()}
    (folder / "test_batch").write_bytes(pickle.dumps(test, protocol=protocol))


@pytest.mark.parametrize(("bytes_keys", "protocol", "batches"), [(True, 2, 5), (False, 5, 2)])
def test_rebuilt_and_partial_cifar_folder_reads_the_real_images(
    tmp_path: Path, bytes_keys: bool, protocol: int, batches: int
) -> None:
    images, labels = load_samples("cifar10")
    write_cifar_folder(tmp_path / "cifar-10-batches-py", images, labels,
                       train_batches=batches, bytes_keys=bytes_keys, protocol=protocol)  # fmt: skip
    data = load_cifar10(tmp_path)
    assert torch.equal(data.train_x, images) and torch.equal(data.train_y, labels)
    assert torch.equal(data.test_x, images[:7]) and data.train_x.dtype == torch.uint8
    assert read_cifar10_folder(tmp_path / "cifar-10-batches-py").num_classes == 10


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": _Exploit(marker)}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_numpy_pickle(path)
    assert not marker.exists()
    # negative control: the ordinary unpickler would have run it
    pickle.loads(path.read_bytes())
    assert marker.exists()


@given(hnp.arrays(st.sampled_from([np.uint8, np.int64, np.float32]), hnp.array_shapes(max_dims=4)))
def test_numpy_arrays_round_trip(tmp_path_factory: pytest.TempPathFactory, a: np.ndarray) -> None:
    path = tmp_path_factory.mktemp("pk") / "a.pkl"
    for protocol in (2, 5):
        path.write_bytes(pickle.dumps({b"data": a}, protocol=protocol))
        np.testing.assert_array_equal(load_numpy_pickle(path)["data"], a)


def test_missing_cifar_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="--download"):
        load_cifar10(tmp_path)
