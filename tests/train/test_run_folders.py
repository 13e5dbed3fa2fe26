"""Runs you cannot lose: overwrite, resume, the lock and divergence, through the real CLI.

Every run here trains VGG11 at width 0.125 on the 20 shipped CIFAR-10 images (batch 10: two
steps per epoch). Kills and concurrent writers are real processes: one SIGKILLs itself at a
step (the debug hook), one SIGSTOPs itself while it holds the lock; nothing depends on timing.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gcnn.checkpoint import read_state_dict
from gcnn.cli import main
from gcnn.data import load_samples
from gcnn.runs import RunPaths
from gcnn.train import TrainConfig, read_state_scalars
from gcnn.train.guard import recover

ROOT = Path(__file__).resolve().parents[2]
RUN = ["train", "--arch", "vgg11", "--width", "0.125", "--data", "cifar10-samples",
       "--batch-size", "10", "--lr", "0.02", "--no-progress"]  # fmt: skip
NAME = "vgg11_cnn_cifar10-samples"


def _cli(args: list[str], env: dict[str, str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gcnn.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, **kw)  # fmt: skip


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = read_state_dict(a / "model.safetensors"), read_state_dict(b / "model.safetensors")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_a_killed_overwrite_leaves_the_old_run_and_resumes_into_its_place(
    tmp_path: Path, subprocess_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    out, ref = tmp_path / "out", tmp_path / "ref"
    assert main([*RUN, "--epochs", "1", "--out", str(out)]) == 0
    final = out / NAME / "seed0"
    old = _snapshot(final)
    assert main([*RUN, "--epochs", "2", "--out", str(ref)]) == 0  # the uninterrupted new run
    capsys.readouterr()

    killed = _cli([*RUN, "--epochs", "2", "--out", str(out), "--overwrite",
                   "--debug-kill-after-step", "3"], subprocess_env)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert _snapshot(final) == old  # the finished run is untouched, byte for byte
    pending = out / NAME / ".seed0.new"
    assert read_state_scalars(pending / "state.safetensors")["step"] == 2
    assert json.loads((final / "model.json").read_text())["epochs"] == 1

    # without a flag, and with the old settings, the pending overwrite is not silently dropped
    assert main([*RUN, "--epochs", "2", "--out", str(out)]) == 2
    assert "unfinished --overwrite" in _error(capsys)
    assert main([*RUN, "--epochs", "1", "--out", str(out), "--resume"]) == 2
    assert "epochs: 2 in the run, 1 now" in _error(capsys)
    assert _snapshot(final) == old

    assert main([*RUN, "--epochs", "2", "--out", str(out), "--resume"]) == 0
    assert sorted(p.name for p in (out / NAME).iterdir()) == [".seed0.lock", "seed0"]
    assert json.loads((final / "model.json").read_text())["epochs"] == 2
    assert _same_weights(final, ref / NAME / "seed0")
    log = (final / "log.jsonl").read_text().splitlines()
    assert [json.loads(row)["epoch"] for row in log] == [1, 2]


def test_a_swap_cut_by_a_kill_is_completed_or_undone(tmp_path: Path) -> None:
    """The two renames of the swap, interrupted at each point, recover to one whole run."""
    assert main([*RUN, "--epochs", "1", "--out", str(tmp_path / "a")]) == 0
    finished = tmp_path / "a" / NAME / "seed0"
    unfinished = tmp_path / "b"
    unfinished.mkdir()
    (unfinished / "state.safetensors").write_bytes(b"unfinished")
    cases = {  # (seed0, .seed0.old, .seed0.new) → what seed0 holds after recover
        "between the renames": (None, finished, finished, "new"),
        "before the deletion": (finished, finished, None, "final"),
        "new one unfinished": (None, finished, unfinished, "old"),
        "killed before the swap": (finished, None, finished, "new"),
    }
    for name, (seed0, old, new, expect) in cases.items():
        final = RunPaths(tmp_path / name / "seed0")
        final.dir.parent.mkdir()
        for src, dst in ((seed0, final.dir), (old, final.discarded), (new, final.pending.dir)):
            if src is not None:
                shutil.copytree(src, dst)
        marker = {"final": final.dir, "old": final.discarded, "new": final.pending.dir}[expect]
        (marker / "which").write_text(expect)
        recover(final)
        assert (final.dir / "which").read_text() == expect, name
        assert not final.discarded.exists(), name
        assert final.pending.dir.exists() == (expect == "old"), name


def test_a_second_writer_is_refused_naming_the_first_ones_pid(
    tmp_path: Path, subprocess_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    args = [*RUN, "--epochs", "2", "--out", str(out)]
    first = subprocess.Popen(
        [sys.executable, "-m", "gcnn.cli", *args, "--debug-stop-after-step", "1"],
        cwd=ROOT, env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        _, status = os.waitpid(first.pid, os.WUNTRACED)  # returns once it has stopped itself
        assert os.WIFSTOPPED(status), status
        for extra in ([], ["--resume"], ["--overwrite"]):
            assert main([*args, *extra]) == 2
            line = _error(capsys)
            assert f"in use by process {first.pid}" in line and "lock" in line, line
    finally:
        first.kill()
        first.wait()
    # the kernel released the dead process's lock: its run resumes and finishes
    assert main([*args, "--resume"]) == 0
    assert (out / NAME / "seed0" / "model.safetensors").is_file()


def test_resume_names_every_setting_and_data_property_that_differs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, labels = load_samples("cifar10")
    roots = [tmp_path / "data1", tmp_path / "data2"]
    for root in roots:  # the 20 real images as a rebuilt CIFAR-10 folder, twice
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        batch = {"data": images.numpy().reshape(20, -1), "labels": labels.tolist()}
        for name in ("data_batch_1", "test_batch"):
            (folder / name).write_bytes(pickle.dumps(batch))
    base = ["train", "--arch", "vgg11", "--width", "0.125", "--data", "cifar10", "--batch-size",
            "10", "--lr", "0.02", "--no-progress", "--out", str(tmp_path / "o")]  # fmt: skip
    assert main([*base, "--data-root", str(roots[0]), "--epochs", "1"]) == 0
    capsys.readouterr()
    # the same data at another root: the data identity names the root
    assert main([*base, "--data-root", str(roots[1]), "--epochs", "1", "--resume"]) == 2
    assert f"data root: '{roots[0].resolve()}" in _error(capsys)
    assert main([*base, "--data-root", str(roots[0]), "--epochs", "3", "--lr", "0.1",
                 "--train-subset", "10", "--resume"]) == 2  # fmt: skip
    line = _error(capsys)
    for named in ("epochs: 1 in the run, 3 now", "lr: 0.02 in the run, 0.1 now",
                  "train_subset: None in the run, 10 now",
                  "data train_images: 20 in the run, 10 now"):  # fmt: skip
        assert named in line, (named, line)
    # settings that change neither weights nor data may differ
    assert main([*base, "--data-root", str(roots[0]), "--epochs", "1", "--eval-every", "0",
                 "--resume"]) == 0  # fmt: skip


def test_lr_inf_stops_as_diverged_and_keeps_a_good_state_and_a_standard_log(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    result = _cli([*RUN, "--epochs", "2", "--lr", "inf", "--out", str(tmp_path)],
                  subprocess_env)  # fmt: skip
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "diverged" in lines[0] and "--lr" in lines[0], lines
    folder = tmp_path / NAME / "seed0"
    assert not (folder / "model.safetensors").exists()
    state = read_state_dict(folder / "state.safetensors")
    assert all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())

    def strict(token: str) -> None:
        raise AssertionError(f"non-standard JSON token {token}")

    rows = [json.loads(r, parse_constant=strict) for r in (folder / "log.jsonl").open()]
    assert rows[-1]["stopped"].startswith("diverged") and rows[-1]["train_loss"] is None


def test_config_repeats_a_run_from_its_sidecar_or_recipe(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert main([*RUN, "--epochs", "1", "--label-smoothing", "0.1", "--seeds", "3",
                 "--out", str(a)]) == 0  # fmt: skip
    sidecar = a / NAME / "seed3" / "model.json"
    assert main(["train", "--config", str(sidecar), "--no-progress", "--out", str(b)]) == 0
    assert _same_weights(a / NAME / "seed3", b / NAME / "seed3")  # seed 3 from the sidecar
    # a flag given with --config overrides it
    assert main(["train", "--config", str(sidecar), "--epochs", "2", "--no-progress",
                 "--out", str(b), "--overwrite"]) == 0  # fmt: skip
    assert json.loads((b / NAME / "seed3" / "model.json").read_text())["epochs"] == 2


def test_committed_recipes_and_sidecars_give_their_runs_settings() -> None:
    """``--config`` reads the committed recipes (older form: the gcnn train arguments) and
    sidecars; a sidecar gives the run's config exactly, and settings added after it was
    written take their defaults."""
    from gcnn.commands.train import _recipe

    folders = sorted(p.parent for p in (ROOT / "models").glob("*/recipe.json"))
    assert folders
    for folder in folders:
        sidecar = json.loads((folder / "model.json").read_text())
        config, seeds = _recipe(str(folder / "model.json"))
        restored = TrainConfig.from_dict(config).to_dict()
        assert {k: restored[k] for k in sidecar["config"]} == sidecar["config"], folder
        newer = set(restored) - set(sidecar["config"])
        assert all(restored[k] == getattr(TrainConfig(), k) for k in newer), folder
        assert seeds == str(sidecar["seed"])
        config, seeds = _recipe(str(folder / "recipe.json"))
        keys = ("arch", "regime", "arch_kwargs", "epochs", "lr", "batch_size", "train_subset")
        assert {k: config[k] for k in keys} == {k: sidecar["config"][k] for k in keys}, folder
        assert seeds == str(sidecar["seed"])
