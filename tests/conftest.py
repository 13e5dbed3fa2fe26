"""Shared test settings: hypothesis profiles and real-image fixtures."""

from __future__ import annotations

import os

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


@pytest.fixture(scope="session")
def cifar_images() -> torch.Tensor:
    """The 20 real CIFAR-10 test images shipped with gcnn, float64 in [0, 1], (20, 3, 32, 32)."""
    from gcnn.data.samples import load_samples

    images, _ = load_samples("cifar10")
    return images.double() / 255
