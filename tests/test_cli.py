"""The ``gcnn`` command: help, version, demo, exactness, and one-line errors."""

from __future__ import annotations

import subprocess
import sys

import gcnn
from gcnn.cli import main


def test_version_and_help(capsys) -> None:
    try:
        main(["--version"])
    except SystemExit as stop:
        assert stop.code == 0
    assert f"gcnn {gcnn.__version__}" in capsys.readouterr().out
    assert main([]) == 0
    assert "COMMAND" in capsys.readouterr().out


def test_demo_on_real_images(capsys) -> None:
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    flip_err = float(out.split("vgg11_flip")[1].split()[0])
    plain_err = float(out.split("vgg11 (plain)")[1].split()[0])
    assert flip_err < 1e-10 < 1e-3 < plain_err


def test_exactness_command(capsys) -> None:
    assert main(["exactness", "--arch", "vgg11_flip", "--size", "32"]) == 0
    assert "flip-exact at 32×32" in capsys.readouterr().out
    assert main(["exactness", "--arch", "vgg11_flip", "--size", "32", "48"]) == 1
    assert "Nearest exact widths: 32, 64" in capsys.readouterr().out


def test_bad_input_is_one_line_and_exit_code_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gcnn.cli", "exactness", "--arch", "vgg12", "--size", "32"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "unknown" in result.stderr and "'vgg12'" in result.stderr
    assert "Traceback" not in result.stderr
