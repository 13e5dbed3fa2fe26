"""``gcnn train`` on the command line: a smoke run on the shipped samples, and user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gcnn.cli import main
from gcnn.data import fashion_mnist

SMOKE = ["train", "--data", "cifar10-samples", "--width", "0.125", "--epochs", "1",
         "--batch-size", "10", "--no-progress"]  # fmt: skip


def test_smoke_run_on_samples_prints_a_summary_per_seed(tmp_path: Path, capsys) -> None:
    assert main([*SMOKE, "--arch", "vgg11_flip", "--regime", "gcnn", "--seeds", "0-1",
                 "--out", str(tmp_path), "--label-smoothing", "0.1"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "mean" in out and out.count("vgg11_flip") == 2
    sidecars = sorted(tmp_path.glob("vgg11_flip_gcnn_cifar10-samples/seed*/model.json"))
    assert [json.loads(p.read_text())["seed"] for p in sidecars] == [0, 1]
    assert json.loads(sidecars[0].read_text())["config"]["label_smoothing"] == 0.1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seeds", "3-1"], "seed range"),
        (["--arch", "vgg13"], "unknown model"),
        (["--arch", "vgg11", "--regime", "gcnn"], "needs a flip architecture"),
        (["--arch", "vgg11_flip", "--regime", "cnn"], "flip model"),
        (["--epochs", "0"], "invalid --epochs 0"),
        (["--arch-kwarg", "depth=3"], "does not accept"),
        (["--data", "imagefolder"], "needs --data-root"),
        (["--data", "cifar10", "--data-root", "/nonexistent"], "CIFAR-10 not found"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_code_2(args, message, tmp_path, capsys) -> None:
    assert main([*SMOKE, "--out", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_missing_fashion_mnist_exit_code_2(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "none")
    assert main(["train", "--data", "fashion-mnist", "--out", str(tmp_path)]) == 2
    assert "apt-get install -y dataset-fashion-mnist" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arch", "regime"),
    [("vgg11", "cnn"), ("vgg11_flip", "gcnn"), ("resnet50_flip_escnn", "gcnn")],
)
def test_regime_defaults_to_the_architecture(arch, regime) -> None:
    from gcnn.cli import build_parser
    from gcnn.commands.train import config_from_args

    args = build_parser().parse_args(["train", "--arch", arch])
    assert config_from_args(args).regime == regime
    explicit = build_parser().parse_args(["train", "--arch", arch, "--regime", "cnn+inv"])
    assert config_from_args(explicit).regime == "cnn+inv"
