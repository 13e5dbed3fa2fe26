"""Shared fixtures of the training tests: one thread, a small real Fashion-MNIST subset."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from gcnn.data import ImageTensors, load_fashion_mnist

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """Environment for training subprocesses: this checkout's gcnn, one thread each."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread inside the block (CPU results depend on the thread count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Training tests run single-threaded (faster on a shared 2-core machine, and module-scoped
    references made under :func:`single_thread` compare bit for bit)."""
    with single_thread():
        yield


@pytest.fixture(scope="session")
def single_threaded():
    """The :func:`single_thread` context manager, for module-scoped fixtures."""
    return single_thread


@pytest.fixture(scope="session")
def fmnist_small() -> ImageTensors:
    """The first 400 training and 200 test images of the real Fashion-MNIST (Debian files)."""
    return load_fashion_mnist().subset(400, 200)


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    """A module-scoped ``MonkeyPatch`` (usable from hypothesis tests)."""
    with pytest.MonkeyPatch.context() as mp:
        yield mp
