"""Shared fixtures of the training tests: one thread, a small real Fashion-MNIST subset."""

from __future__ import annotations

import os
from collections.abc import Iterator
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


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Training tests run single-threaded (faster on a shared 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def fmnist_small() -> ImageTensors:
    """The first 400 training and 200 test images of the real Fashion-MNIST (Debian files)."""
    return load_fashion_mnist().subset(400, 200)


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    """A module-scoped ``MonkeyPatch`` (usable from hypothesis tests)."""
    with pytest.MonkeyPatch.context() as mp:
        yield mp
