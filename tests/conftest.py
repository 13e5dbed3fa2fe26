"""Shared test settings: hypothesis profiles and real-image fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "ci",
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("thorough", max_examples=300, deadline=None)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default")
)

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session", autouse=True)
def conv_tuning_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The suite's own conv-tuning file (``path="auto"`` stores measured kernel choices), so
    tests never read or write the user's ``~/.cache/gcnn``; child processes inherit it."""
    from gcnn.nn import tuning_store

    path = tmp_path_factory.mktemp("tuning") / "conv_tuning.json"
    before = os.environ.get(tuning_store.ENV_VAR)
    os.environ[tuning_store.ENV_VAR] = str(path)
    yield path
    if before is None:
        del os.environ[tuning_store.ENV_VAR]
    else:
        os.environ[tuning_store.ENV_VAR] = before


@pytest.fixture(scope="session")
def cifar_images() -> torch.Tensor:
    """The 20 real CIFAR-10 test images shipped with gcnn, float64 in [0, 1], (20, 3, 32, 32)."""
    from gcnn.data.samples import load_samples

    images, _ = load_samples("cifar10")
    return images.double() / 255
