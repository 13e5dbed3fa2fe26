"""``gcnn.runs``: ``load_run`` on the committed models and on fresh runs, the sidecar schema,
standard JSON, and older run folders that stay readable and resumable."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import gcnn
from gcnn.cli import main
from gcnn.data import load_sample_dataset
from gcnn.errors import CheckpointError
from gcnn.runs import json_safe, load_run, write_jsonl
from gcnn.train import DistContext, TrainConfig, evaluate, train_seed

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = sorted(p.parent for p in (ROOT / "models").glob("*/model.json"))


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread (faster on the shared 2-core machine than two contending ones)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("folder", COMMITTED, ids=[p.name for p in COMMITTED])
def test_committed_models_load_by_folder_or_file(folder: Path) -> None:
    model, meta = load_run(folder)
    assert not model.training and meta["arch"] in ("vgg11", "vgg11_flip")
    same, _ = load_run(folder / "model.safetensors")
    built = gcnn.create_model(meta["arch"], weights=folder / "model.safetensors",
                              **meta["arch_kwargs"]).eval()  # fmt: skip
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), built(x)) and torch.equal(same(x), built(x))


def test_a_fresh_run_loads_and_reproduces_its_accuracy(tmp_path: Path) -> None:
    data = load_sample_dataset("cifar10")
    cfg = TrainConfig(arch="vgg11_flip", data="cifar10-samples", arch_kwargs={"width": 0.125},
                      epochs=1, batch_size=10, regime="gcnn")  # fmt: skip
    sidecar = train_seed(cfg, data, 0, tmp_path, DistContext(), progress=False)
    model, meta = load_run(tmp_path / "vgg11_flip_gcnn_cifar10-samples" / "seed0")
    assert meta == json.loads(json.dumps(sidecar))
    assert meta["data"] == {"dataset": "cifar10-samples", "root": None,
                            "classes": list(data.classes), "train_images": 20,
                            "test_images": 20}  # fmt: skip
    assert evaluate(model, data, DistContext())["acc"] == pytest.approx(meta["test_acc"])


def test_unfinished_and_missing_runs_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="run folder not found"):
        load_run(tmp_path / "nothing")
    folder = tmp_path / "seed0"
    folder.mkdir()
    (folder / "state.safetensors").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unfinished run.*--resume"):
        load_run(folder)
    shutil.copy(COMMITTED[0] / "model.safetensors", folder)
    with pytest.raises(CheckpointError, match="no model.json"):
        load_run(folder)
    (folder / "model.json").write_text('{"arch": "vgg11"}')
    with pytest.raises(CheckpointError, match="lacks arch_kwargs"):
        load_run(folder)


def test_an_older_finished_run_is_kept_by_resume(tmp_path: Path, capsys) -> None:
    """A committed model (sidecar of an older gcnn, no data identity) placed as a run folder:
    ``--config model.json --resume`` keeps it and reports its own accuracy."""
    src = ROOT / "models" / "vgg11-w025-fmnist-cnn"
    meta = json.loads((src / "model.json").read_text())
    folder = tmp_path / "vgg11_cnn_fashion-mnist" / "seed0"
    shutil.copytree(src, folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    args = ["train", "--config", str(src / "model.json"), "--no-progress", "--out", str(tmp_path)]
    assert main([*args, "--resume"]) == 0
    assert f"{meta['test_acc']:.2f}%" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert main([*args, "--resume", "--train-subset", "5000"]) == 2  # other data: refused
    assert "train_images: 10000 in the run, 5000 now" in capsys.readouterr().err


def test_logs_and_sidecars_are_standard_json(tmp_path: Path) -> None:
    rows = [{"loss": math.nan, "acc": [1.0, math.inf, -math.inf], "ok": 2.5}]
    assert json_safe(rows) == [{"loss": None, "acc": [1.0, None, None], "ok": 2.5}]
    path = write_jsonl(tmp_path / "log.jsonl", rows)
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()


def test_the_training_guide_examples_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """The python blocks of docs/training.md run as written (from the repository root)."""
    import re

    guide = ROOT / "docs" / "training.md"
    blocks = re.findall(r"```python\n(.*?)```", guide.read_text(), flags=re.S)
    assert blocks
    monkeypatch.chdir(ROOT)
    for block in blocks:
        exec(compile(block, str(guide), "exec"), {})


def test_an_older_unfinished_run_resumes(tmp_path: Path, monkeypatch) -> None:
    """A state written before the data identity was recorded (older gcnn) still resumes, to
    the weights of an uninterrupted run."""
    from gcnn.checkpoint import read_state_dict
    from gcnn.train import load_train_state, loop, save_train_state

    data = load_sample_dataset("cifar10")
    cfg = TrainConfig(data="cifar10-samples", arch_kwargs={"width": 0.125}, epochs=2,
                      batch_size=10)  # fmt: skip
    train_seed(cfg, data, 0, tmp_path / "ref", DistContext(), progress=False)

    class Stop(Exception):
        pass

    def stop() -> None:
        raise Stop

    monkeypatch.setattr(loop, "_kill_self", stop)
    with pytest.raises(Stop):
        train_seed(cfg, data, 0, tmp_path / "old", DistContext(), progress=False,
                   debug_kill_after_step=3)  # fmt: skip
    state = next((tmp_path / "old").glob("*/seed0/state.safetensors"))
    model_state, optim_state, scalars = load_train_state(state)
    del scalars["data"]  # as written by older gcnn
    save_train_state(state, model_state, optim_state, scalars)
    train_seed(cfg, data, 0, tmp_path / "old", DistContext(), progress=False, resume=True)
    a, b = (read_state_dict(next((tmp_path / d).glob("*/seed0/model.safetensors")))
            for d in ("ref", "old"))  # fmt: skip
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_data_identity_of_an_image_folder(tmp_path: Path) -> None:
    """An ImageFolder tree is identified by its absolute root, classes and image counts."""
    from gcnn.data import load_dataset, sample_files
    from gcnn.runs import data_identity

    for f in sample_files("cifar10"):
        for split in ("train", "val"):
            (tmp_path / "tree" / split / f.stem[-1]).mkdir(parents=True, exist_ok=True)
            shutil.copy(f, tmp_path / "tree" / split / f.stem[-1] / f.name)
    shutil.rmtree(tmp_path / "tree" / "val" / "0")
    (tmp_path / "tree" / "val" / "0").mkdir()
    shutil.copy(sample_files("cifar10")[3], tmp_path / "tree" / "val" / "0")
    identity = data_identity(load_dataset("imagefolder", tmp_path / "tree", image_size=32))
    classes = sorted({f.stem[-1] for f in sample_files("cifar10")})
    assert identity == {"dataset": f"imagefolder:{tmp_path / 'tree'}",
                        "root": str((tmp_path / "tree").resolve()), "classes": classes,
                        "train_images": 20, "test_images": 19}  # fmt: skip
