"""The optional-dependency contract: gcnn works without escnn, gcnn.escnn explains how to get it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import escnn  # noqa: F401  (CI installs the extra: a missing escnn must fail, not skip)

ROOT = Path(__file__).resolve().parents[2]


def run(code: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *flags, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_gcnn_works_without_escnn_and_says_how_to_install_it() -> None:
    code = """
import sys
sys.modules["escnn"] = None  # as if escnn were not installed
import torch, gcnn
model = gcnn.create_model("vgg11_flip", width=0.125)
assert model(torch.rand(1, 3, 32, 32)).shape == (1, 10)
assert "vgg11_flip_escnn" in gcnn.list_models()
try:
    gcnn.create_model("vgg11_flip_escnn")
except ImportError as err:
    print(err)
else:
    raise SystemExit("no ImportError")
"""
    result = run(code)
    assert result.returncode == 0, result.stderr
    assert 'pip install "gcnn[escnn]"' in result.stdout
    assert "gfortran" in result.stdout


def test_escnn_is_imported_lazily_and_its_py3nj_warning_is_harmless() -> None:
    """``import gcnn`` never imports escnn; ``gcnn.escnn`` imports under ``-W error`` even
    without py3nj, whose absence escnn reports with a warning (the control at the end)."""
    code = """
import importlib, sys, warnings
sys.modules["py3nj"] = None
import gcnn
gcnn.create_model("vgg11_flip", width=0.125)
assert "escnn" not in sys.modules
import gcnn.escnn  # -W error: any warning at import would raise
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    importlib.reload(sys.modules["escnn.group.groups.so3group"])
assert any("py3nj" in str(w.message) for w in caught), caught
"""
    result = run(code, "-W", "error")
    assert result.returncode == 0, result.stderr
