"""Every user error is one line on stderr with exit code 2, names the file or flag and the fix,
and leaves nothing in ``--out``; a bug in gcnn keeps its traceback.

The cases are the ones a new user ran into (issue 12): broken files of every kind, bad flags,
devices that do not exist, data a classifier cannot learn from. They run ``gcnn.cli.main``
in-process (an uncaught exception fails the test with its traceback); a few also run
``python -m gcnn.cli`` in a subprocess, the entry point users call.
"""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from gcnn.checkpoint import load_weights
from gcnn.cli import main
from gcnn.data.fashion_mnist import DEBIAN_DIR
from gcnn.data.samples import sample_files
from gcnn.errors import CheckpointError
from gcnn.models import registry

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--arch", "vgg11", "--width", "0.125", "--epochs", "1", "--batch-size", "10",
         "--no-progress"]  # fmt: skip
SAMPLES = ["--data", "cifar10-samples"]


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Broken and hostile inputs, built from real files."""
    d = tmp_path_factory.mktemp("inputs")
    tree = d / "tree"  # an ImageFolder of the 20 real CIFAR-10 samples
    for f in sample_files("cifar10"):
        for split in ("train", "val"):
            (tree / split / f.stem[-1]).mkdir(parents=True, exist_ok=True)
            shutil.copy(f, tree / split / f.stem[-1] / f.name)
    broken = d / "broken"
    shutil.copytree(tree, broken)
    jpeg = broken / "train" / "3" / "cut.jpg"
    Image.open(sample_files("cifar10")[0]).convert("RGB").resize((64, 64)).save(jpeg)
    jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    one_class = d / "one_class"
    for split in ("train", "val"):
        (one_class / split / "cat").mkdir(parents=True)
        shutil.copy(sample_files("cifar10")[0], one_class / split / "cat" / "a.png")
    for name, content in (("cut", b"\x80\x02}q\x00(X\x04\x00\x00\x00dataq"),
                          ("hostile", pickle.dumps({"data": _Exploit(d / "pwned")}))):  # fmt: skip
        folder = d / f"cifar_{name}" / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        (folder / "data_batch_1").write_bytes(content)
        (folder / "test_batch").write_bytes(content)
    fmnist = d / "fmnist"  # the Debian files, the training labels cut short
    fmnist.mkdir()
    for f in DEBIAN_DIR.glob("*.gz"):
        (fmnist / f.name).symlink_to(f)
    labels = fmnist / "train-labels-idx1-ubyte.gz"
    data = (DEBIAN_DIR / labels.name).read_bytes()
    labels.unlink()
    labels.write_bytes(data[: len(data) // 2])
    (d / "text.pt").write_text("hello, not a checkpoint\n" * 20)
    (d / "empty.pt").write_bytes(b"")
    torch.save({"state_dict": _Exploit(d / "pwned")}, d / "code.pt")
    (d / "a_file").write_text("not a folder")
    return {"tree": tree, "broken": broken, "one_class": one_class, "dir": d,
            "cifar_cut": d / "cifar_cut", "cifar_hostile": d / "cifar_hostile",
            "fmnist": fmnist}  # fmt: skip


def _fails(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """``gcnn ARGS`` exits with 2 and one line on stderr (no traceback); return that line."""
    try:
        code = main(args)
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


IMAGEFOLDER = ["--data", "imagefolder", "--workers", "0"]
TRAIN_CASES = {
    # (arguments after TRAIN, words the message must contain)
    "image size for tensor data": (["--image-size", "8", *SAMPLES],
                                   ["--image-size", "imagefolder"]),
    "image size 8": ([*IMAGEFOLDER, "--image-size", "8", "ROOT=tree"],
                     ["cannot run", "--image-size"]),
    "image size 1": ([*IMAGEFOLDER, "--image-size", "1", "ROOT=tree"],
                     ["cannot run", "--image-size"]),
    "image size 0": ([*IMAGEFOLDER, "--image-size", "0", "ROOT=tree"],
                     ["--image-size 0", "≥ 1"]),
    "negative crop padding": (["--crop-pad", "-4", *SAMPLES], ["--crop-pad -4", "≥ 0"]),
    "unknown device": (["--device", "tpu", *SAMPLES], ["--device 'tpu'", "cpu, cuda"]),
    "one-class tensor data": (["--train-subset", "1", *SAMPLES], ["all have label", "two classes"]),
    "one-class folder": ([*IMAGEFOLDER, "--image-size", "32", "ROOT=one_class"],
                         ["1 class folder", "at least two"]),
    "missing fashion-mnist root": (["--data", "fashion-mnist", "--data-root", "/nonexistent"],
                                   ["/nonexistent", "drop --data-root"]),
    "negative checkpoint interval": (["--checkpoint-every", "-1", *SAMPLES],
                                     ["--checkpoint-every -1"]),
    "negative eval interval": (["--eval-every", "-2", *SAMPLES], ["--eval-every -2"]),
    "abbreviated flag": (["--epoch", "3", *SAMPLES], ["unrecognized arguments: --epoch 3"]),
    "overflowing seed": (["--seeds", "99999999999999999999", *SAMPLES], ["too large", "2**63"]),
    "resume and overwrite": (["--resume", "--overwrite", *SAMPLES], ["contradict"]),
    "cut CIFAR pickle": (["--data", "cifar10", "ROOT=cifar_cut"], ["data_batch_1", "re-extract"]),
    "hostile CIFAR pickle": (["--data", "cifar10", "ROOT=cifar_hostile"],
                             ["carries code", "system"]),
    "truncated fashion-mnist gz": (["--data", "fashion-mnist", "ROOT=fmnist"],
                                   ["train-labels-idx1-ubyte.gz is truncated", "reinstall"]),
    "unknown architecture": (["--arch", "vgg12", *SAMPLES], ["unknown model 'vgg12'"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_train_bad_input(case: str, files, tmp_path: Path, capsys) -> None:
    args, words = TRAIN_CASES[case]
    expanded: list[str] = []
    for a in args:  # ROOT=<name>: --data-root of one of the built inputs
        expanded += ["--data-root", str(files[a[5:]])] if a.startswith("ROOT=") else [a]
    out = tmp_path / "out"
    line = _fails([*TRAIN, *expanded, "--out", str(out)], capsys)
    assert all(w in line for w in words), line
    assert not out.exists() or not any(out.rglob("*"))  # nothing half-written
    assert not (files["dir"] / "pwned").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu(tmp_path: Path, capsys) -> None:
    line = _fails([*TRAIN, *SAMPLES, "--device", "cuda", "--out", str(tmp_path)], capsys)
    assert "no usable CUDA GPU" in line and "--device cpu" in line


def test_out_that_is_a_file(files, capsys) -> None:
    out = files["dir"] / "a_file"
    line = _fails([*TRAIN, *SAMPLES, "--out", str(out)], capsys)
    assert "a_file is a file" in line and out.read_text() == "not a folder"


def test_a_corrupt_jpeg_is_named(files, tmp_path: Path, capsys) -> None:
    """Found while training (in a loader worker): one line naming the file, nothing else."""
    line = _fails([*TRAIN, "--data", "imagefolder", "--data-root", str(files["broken"]),
                   "--image-size", "32", "--workers", "1", "--batch-size", "21",
                   "--out", str(tmp_path)], capsys)  # fmt: skip
    assert "cut.jpg is not a readable image" in line and "replace or delete it" in line


CHECK_CASES = {
    "text file named .pt": (["--weights", "text.pt"], ["text.pt is not a torch checkpoint"]),
    "empty file": (["--weights", "empty.pt"], ["empty.pt is empty (0 bytes)"]),
    "directory": (["--weights", "tree"], ["is a directory", "model.safetensors"]),
    "code-carrying pickle": (["--weights", "code.pt"],
                             ["carries pickled code (posix.system)", "safetensors"]),
    "image size 0": (["--image-size", "0"], ["--image-size 0", "≥ 1"]),
    "image size -5": (["--image-size", "-5"], ["--image-size -5"]),
    "unknown device": (["--device", "tpu"], ["--device 'tpu'"]),
    "corrupt JPEG": (["--data", "broken"], ["cut.jpg is not a readable image"]),
    "channel mismatch": (["--data", "fashion-mnist-samples"],
                         ["does not take the 1-channel images", "in_channels"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CHECK_CASES))
def test_check_bad_input(case: str, files, tmp_path: Path, capsys) -> None:
    args, words = CHECK_CASES[case]
    args = [str(files["dir"] / a) if a.endswith(".pt") or a in ("tree", "broken") else a
            for a in args]  # fmt: skip
    if "--data" not in args:
        args += SAMPLES
    out = tmp_path / "out"
    line = _fails(["check", "--arch", "vgg11", *args, "--out", str(out)], capsys)
    assert all(w in line for w in words), line
    assert not out.exists()
    assert not (files["dir"] / "pwned").exists()


def test_load_weights_names_a_broken_file(files) -> None:
    with pytest.raises(CheckpointError, match="text.pt is not a torch checkpoint"):
        load_weights(torch.nn.Linear(2, 2), files["dir"] / "text.pt")


def test_the_entry_point_prints_one_line(files, tmp_path: Path) -> None:
    """``python -m gcnn.cli``: user errors are one line and exit 2 (no traceback)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for args in ([*TRAIN, *SAMPLES, "--crop-pad", "-4", "--out", str(tmp_path)],
                 ["check", "--arch", "vgg11", "--weights", str(files["dir"] / "text.pt"),
                  *SAMPLES, "--out", str(tmp_path)]):  # fmt: skip
        result = subprocess.run([sys.executable, "-m", "gcnn.cli", *args], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=300)  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A ``ValueError`` that is not a user error (here: a model whose builder is broken)
    propagates instead of being printed as a one-line usage error."""

    def broken(**kwargs) -> torch.nn.Module:
        raise ValueError("a bug inside a builder")

    monkeypatch.setitem(registry._REGISTRY, "broken_model", broken)
    with pytest.raises(ValueError, match="a bug inside a builder"):
        main([*TRAIN, *SAMPLES, "--arch", "broken_model", "--out", str(tmp_path)])


def test_gzip_helper_sanity() -> None:
    """The truncated file above is a real gzip stream cut short (negative control: the whole
    file decompresses)."""
    name = "train-labels-idx1-ubyte.gz"
    assert len(gzip.decompress((DEBIAN_DIR / name).read_bytes())) == 60008


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ('{"argv": ["train", "--epoch", "3"]}', ["recorded arguments do not parse", "--epoch 3"]),
        ('{"name": "x"}', ['no "config" object', "model.json"]),
        ('{"config": {"epochs": 1, "lr_peak": 2}}', ["unknown training settings: lr_peak"]),
        ("not json", ["is not a JSON file"]),
        (None, ["no such file"]),
    ],
)
def test_bad_config_files(content, words, tmp_path: Path, capsys) -> None:
    recipe = tmp_path / "recipe.json"
    if content is not None:
        recipe.write_text(content)
    out = tmp_path / "out"
    line = _fails(["train", "--config", str(recipe), "--no-progress", "--out", str(out)], capsys)
    assert all(w in line for w in words), line
    assert not out.exists()
