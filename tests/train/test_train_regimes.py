"""One-epoch training runs on real Fashion-MNIST images, one per regime, and their checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import gcnn
from gcnn.checkpoint import read_state_dict
from gcnn.runs import load_run
from gcnn.testing import flip_equivariance_error
from gcnn.train import DistContext, TrainConfig, evaluate, train_seed

CASES = {
    "cnn": dict(arch="vgg11", regime="cnn"),
    "cnn+inv": dict(arch="vgg11", regime="cnn+inv", inv_lambda=0.5),
    "cnn+inv-features": dict(arch="vgg11", regime="cnn+inv", inv_target="features", inv_start=0.0),
    "gcnn": dict(arch="vgg11_flip", regime="gcnn"),
    "cnn+inv-late": dict(arch="vgg11", regime="cnn+inv", inv_lambda=0.5, inv_start=0.5, epochs=2),
}


def small_config(**kw) -> TrainConfig:
    base = dict(data="fashion-mnist", arch_kwargs={"width": 0.125}, epochs=1, batch_size=100,
                lr=0.05, warmup=0.25)  # fmt: skip
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def runs(fmnist_small, tmp_path_factory, single_threaded) -> dict[str, tuple[dict, Path]]:
    out = tmp_path_factory.mktemp("runs")
    done = {}
    for name, kw in CASES.items():
        cfg = small_config(**kw)
        with single_threaded():
            sidecar = train_seed(cfg, fmnist_small, 0, out / name, DistContext(), progress=False)
        done[name] = (sidecar, out / name)
    return done


@pytest.mark.parametrize("name", list(CASES))
def test_run_writes_loadable_checkpoint_sidecar_and_log(runs, fmnist_small, name: str) -> None:
    sidecar, out = runs[name]
    folder = next(out.glob("*/seed0"))
    assert sorted(p.name for p in folder.iterdir()) == [
        "log.jsonl",
        "model.json",
        "model.safetensors",
    ]
    on_disk = json.loads((folder / "model.json").read_text())
    assert on_disk == json.loads(json.dumps(sidecar))
    for key in ("arch", "arch_kwargs", "regime", "inv_lambda", "seed", "dataset", "epochs",
                "test_acc", "gcnn_version", "torch_version", "device"):  # fmt: skip
        assert key in on_disk
    assert on_disk["dataset"] == "fashion-mnist" and on_disk["arch_kwargs"]["in_channels"] == 1
    assert on_disk["torch_version"] == torch.__version__ and on_disk["device"] == "cpu"
    log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    epochs = CASES[name].get("epochs", 1)
    assert len(log) == epochs and log[-1]["step"] == 4 * epochs and log[0]["train_loss"] > 0
    # the builders' weights= loads the checkpoint and reproduces the recorded accuracy
    model = gcnn.create_model(
        on_disk["arch"], weights=folder / "model.safetensors", **on_disk["arch_kwargs"]
    )
    result = evaluate(model, fmnist_small, DistContext())
    assert result["acc"] == pytest.approx(on_disk["test_acc"], abs=1e-9)
    assert result["acc_tta"] == pytest.approx(on_disk["test_acc_tta"], abs=1e-9)
    # training moved the weights away from the seed's initialisation
    torch.manual_seed(0)
    init = gcnn.create_model(on_disk["arch"], **on_disk["arch_kwargs"]).state_dict()
    trained = read_state_dict(folder / "model.safetensors")
    assert any(not torch.equal(init[k], trained[k]) for k in init if init[k].is_floating_point())


def test_invariance_loss_is_logged_only_for_cnn_inv(runs) -> None:
    def inv(name: str) -> float:
        folder = next(runs[name][1].glob("*/seed0"))
        return json.loads((folder / "log.jsonl").read_text().splitlines()[0])["inv_loss"]

    assert inv("cnn") == 0 and inv("gcnn") == 0
    assert inv("cnn+inv") > 0 and inv("cnn+inv-features") > 0


def test_invariance_loss_is_zero_before_inv_start_and_positive_after(runs) -> None:
    folder = next(runs["cnn+inv-late"][1].glob("*/seed0"))
    log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in log] == [1, 2]
    assert log[0]["inv_loss"] == 0  # switched on at step 4 of 8: the first epoch has none
    assert log[1]["inv_loss"] > 0


def test_gcnn_stays_exactly_invariant_after_training(runs, fmnist_small) -> None:
    x = fmnist_small.test_x[:32].double() / 255
    errors = {}
    for name in ("gcnn", "cnn"):
        model, _ = load_run(next(runs[name][1].glob("*/seed0")))
        errors[name] = flip_equivariance_error(model.double(), x)
    assert errors["gcnn"] < 1e-12
    assert errors["cnn"] > 1e-4  # negative control: the plain net trained with flips is not


def test_gcnn_flip_tta_changes_nothing(runs) -> None:
    sidecar = runs["gcnn"][0]
    assert sidecar["test_acc"] == sidecar["test_acc_tta"]
