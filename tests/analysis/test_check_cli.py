"""``gcnn check`` end to end on checkpoint files and real images, and its one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gcnn
from gcnn.analysis.data import load_analysis_data
from gcnn.analysis.merge import reset_batchnorm
from gcnn.cli import main
from gcnn.data.samples import SAMPLES_DIR

ROOT = Path(__file__).resolve().parents[2]
TRAINED = ROOT / "models" / "vgg11-w025-fmnist-cnn" / "model.safetensors"
LAYER_KEYS = {
    "name",
    "channels",
    "involution",
    "fixed_points",
    "two_cycles",
    "longer_cycles",
    "dead_channels",
    "matched_correlation",
    "involution_correlation",
    "equivariance_error_before",
    "equivariance_error_after",
    "equivariance_error_normalized",
}


def _check(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "report"
    assert main(["check", *args, "--alphas", "0", "0.5", "1", "--out", str(out)]) == 0
    files = (
        "report.md",
        "permutations.json",
        "barrier.png",
        "equivariance.png",
        "permutations.png",
    )
    for name in files:
        assert (out / name).stat().st_size > 0, name
    return json.loads((out / "report.json").read_text())


def test_trained_checkpoint_on_real_fashion_mnist(tmp_path, capsys) -> None:
    """A committed trained VGG11 (with its model.json sidecar) on real Fashion-MNIST images."""
    report = _check(
        tmp_path, "--weights", str(TRAINED), "--data", "fashion-mnist",
        "--num-images", "100", "--num-eval", "200",
    )  # fmt: skip
    assert report["arch"] == "vgg11" and report["image_size"] == [32, 32]
    assert report["exact_size"] is True
    acc = report["accuracy"]
    assert set(acc) == {
        "model", "twin", "merged", "merged_bn_reset", "merged_repair", "merged_repair_activations"
    }  # fmt: skip
    assert acc["model"] > 70 and acc["twin"] > 70  # a trained net, flip-augmented
    assert set(report["barrier"]) >= {"loss", "accuracy"}
    assert len(report["layers"]) == 8 and all(LAYER_KEYS <= set(la) for la in report["layers"])
    assert report["statistics"]["mirror_closed"] is True and report["statistics"]["images"] == 100
    for layer in report["layers"]:  # a trained CNN: aligned far better than chance
        assert 0 < layer["equivariance_error_normalized"] < 0.9
        assert layer["matched_correlation"] >= layer["involution_correlation"] - 1e-12
    permutations = json.loads((tmp_path / "report" / "permutations.json").read_text())
    assert sorted(permutations) == sorted(la["name"] for la in report["layers"])
    table = capsys.readouterr().out
    assert "verdict:" in table and "report.json" in table


def test_torchvision_arch_on_a_folder_of_real_images(tmp_path) -> None:
    """A torchvision model from a plain state-dict file, on the shipped (unlabelled) PNGs."""
    torch.manual_seed(0)
    path = tmp_path / "resnet18.pt"
    torch.save(__import__("torchvision").models.resnet18(num_classes=10).state_dict(), path)
    report = _check(
        tmp_path, "--arch", "resnet18", "--weights", str(path),
        "--data", str(SAMPLES_DIR / "cifar10"), "--image-size", "33", "--num-images", "10",
        "--num-eval", "10", "--methods", "interpolate", "bn_reset",
    )  # fmt: skip
    assert report["accuracy"]["model"] is None and report["barrier"]["loss"] is None
    assert report["image_size"] == [33, 33] and report["exact_size"] is True  # 32k + 1
    assert len(report["layers"]) == 4 + 8  # four residual streams, one group per inner conv


def _fails(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``gcnn check`` in-process; it must fail with exit code 2 and one line on stderr."""
    assert main(["check", *args, "--out", "unused"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_module_entry_point_reports_usage_errors_in_one_line() -> None:
    """``python -m gcnn.cli`` runs the CLI as ``__main__``: its errors must still be caught."""
    result = subprocess.run(
        [sys.executable, "-m", "gcnn.cli", "check", "--arch", "vgg11", "--data", "nowhere",
         "--out", "unused"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys) -> None:
    data = ["--data", "cifar10-samples"]
    assert "not found" in _fails(
        ["--arch", "vgg11", "--weights", "missing.safetensors", *data], capsys
    )
    assert "missing keys" in _fails(
        ["--arch", "resnet50", "--weights", str(TRAINED), *data], capsys
    )

    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (print, ("pwned",))

    pickled = tmp_path / "evil.pt"
    torch.save({"state_dict": Evil()}, pickled)
    assert "refuses" in _fails(["--arch", "vgg11", "--weights", str(pickled), *data], capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no images" in _fails(["--arch", "vgg11", "--data", str(empty)], capsys)
    assert "size" in _fails(["--arch", "vgg11", *data, "--image-size", "8"], capsys)
    assert "unknown --arch" in _fails(["--arch", "nonet", *data], capsys)


def test_flip_checkpoint_is_exported_before_the_check(tmp_path) -> None:
    torch.manual_seed(0)
    model = gcnn.vgg11_flip(width=0.25)
    data = load_analysis_data("cifar10-samples")
    reset_batchnorm(model, data.train)  # data statistics, as after training: no dead channels
    path = gcnn.save_weights(model, tmp_path / "flip.safetensors")
    report = _check(
        tmp_path, "--arch", "vgg11_flip", "--weights", str(path), "--model-kwargs",
        '{"width": 0.25}', "--data", "cifar10-samples", "--methods", "interpolate",
    )  # fmt: skip
    assert all(layer["involution"] and not layer["fixed_points"] for layer in report["layers"])
    assert max(layer["equivariance_error_after"] for layer in report["layers"]) < 1e-6
    assert report["nearest_gcnn"]["certified"] and report["nearest_gcnn"]["flip_model"]


@pytest.mark.parametrize("alphas", [["0", "1"], ["0", "0.5", "2"]])
def test_alpha_grid_is_validated(alphas, capsys) -> None:
    line = _fails(["--arch", "vgg11", "--data", "cifar10-samples", "--alphas", *alphas], capsys)
    assert "alphas" in line
