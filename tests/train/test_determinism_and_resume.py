"""Same seed → same weights; a run killed mid-epoch and resumed equals an uninterrupted run."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gcnn.checkpoint import read_state_dict
from gcnn.cli import main
from gcnn.train import DistContext, TrainConfig, load_train_state, loop, train_seed

ROOT = Path(__file__).resolve().parents[2]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return read_state_dict(next(out.glob("*/seed*/model.safetensors")))


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_same_weights_other_seed_other_weights(fmnist_small, tmp_path: Path) -> None:
    data = fmnist_small.subset(200, 50)
    cfg = TrainConfig(arch="vgg11", data="fashion-mnist", arch_kwargs={"width": 0.125},
                      epochs=1, batch_size=50, lr=0.05)  # fmt: skip
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        train_seed(cfg, data, seed, tmp_path / name, DistContext(), progress=False)
    assert _equal(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    assert not _equal(_weights(tmp_path / "a"), _weights(tmp_path / "c"))


ARGS = [
    "train", "--arch", "vgg11", "--regime", "cnn+inv", "--width", "0.125",
    "--data", "fashion-mnist", "--train-subset", "200", "--test-subset", "50",
    "--epochs", "2", "--batch-size", "50", "--lr", "0.05", "--checkpoint-every", "3",
    "--seeds", "4", "--no-progress",
]  # fmt: skip


def test_killed_run_resumes_to_the_same_weights_bit_for_bit(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    # uninterrupted reference (in this process): 2 epochs × 4 steps, invariance loss from step 2
    assert main([*ARGS, "--out", str(tmp_path / "ref")]) == 0
    reference = _weights(tmp_path / "ref")

    # a real process, SIGKILLed by itself after step 7 (its last saved state is step 6)
    killed = tmp_path / "killed"
    proc = subprocess.run(
        [sys.executable, "-m", "gcnn.cli", *ARGS, "--out", str(killed),
         "--debug-kill-after-step", "7"],
        cwd=ROOT, env=subprocess_env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == -9, proc.stderr
    folder = next(killed.glob("*/seed4"))
    assert not (folder / "model.safetensors").exists()
    _, _, scalars = load_train_state(folder / "state.safetensors")
    assert scalars["step"] == 6  # mid-epoch 2 (4 steps per epoch; saved at 3, 4, 6)

    # a copy of the killed run's state refuses to resume under another configuration
    other = tmp_path / "other"
    shutil.copytree(killed, other)
    assert main([*ARGS, "--out", str(other), "--resume", "--lr", "0.1"]) == 2
    # without --resume the unfinished run is not silently overwritten
    assert main([*ARGS, "--out", str(killed)]) == 2
    assert main([*ARGS, "--out", str(killed), "--resume"]) == 0
    assert not (folder / "state.safetensors").exists()
    assert _equal(_weights(killed), reference)
    log = (folder / "log.jsonl").read_text().splitlines()
    assert len(log) == 2  # one row per epoch, none duplicated by the resume
    # a finished run is skipped by --resume and refused without it
    assert main([*ARGS, "--out", str(killed), "--resume"]) == 0
    assert main([*ARGS, "--out", str(killed)]) == 2


class _Stop(Exception):
    """Stands in for SIGKILL in-process (the real kill is tested above)."""


@pytest.fixture(scope="module")
def samples_reference(
    tmp_path_factory, single_threaded
) -> tuple[TrainConfig, dict[str, torch.Tensor]]:
    from gcnn.data import load_sample_dataset

    cfg = TrainConfig(arch="vgg11", regime="cnn+inv", data="cifar10-samples", epochs=3,
                      batch_size=5, lr=0.02, arch_kwargs={"width": 0.125},
                      eval_every=0)  # fmt: skip
    out = tmp_path_factory.mktemp("ref")
    with single_threaded():
        train_seed(cfg, load_sample_dataset("cifar10"), 0, out, DistContext(), progress=False)
    return cfg, _weights(out)


@settings(max_examples=8)
@given(kill_after=st.integers(1, 11), every=st.integers(0, 5))
def test_stop_at_any_step_then_resume_equals_uninterrupted(
    samples_reference, tmp_path_factory, monkeypatch_module, kill_after: int, every: int
) -> None:
    from gcnn.data import load_sample_dataset

    cfg, reference = samples_reference
    cfg = dataclasses.replace(cfg, checkpoint_every=every)
    data, out = load_sample_dataset("cifar10"), tmp_path_factory.mktemp("stop")

    def stop() -> None:
        raise _Stop

    monkeypatch_module.setattr(loop, "_kill_self", stop)
    with pytest.raises(_Stop):
        train_seed(
            cfg, data, 0, out, DistContext(), progress=False, debug_kill_after_step=kill_after
        )
    train_seed(cfg, data, 0, out, DistContext(), progress=False, resume=True)
    assert _equal(_weights(out), reference)
