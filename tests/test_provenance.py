"""``gcnn.provenance``: the commit recorded in sidecars and reports is the code's own."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import gcnn
from gcnn.provenance import code_provenance

PACKAGE = Path(gcnn.__file__).resolve().parent


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(PACKAGE), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_records_the_checkout_commit_and_whether_the_package_is_modified() -> None:
    code = code_provenance()
    assert code["commit"] == _git("rev-parse", "HEAD")
    assert code["modified"] == bool(_git("status", "--porcelain", "--untracked-files=no", "."))
    assert code["gcnn"] == gcnn.__version__


def test_a_package_outside_git_records_no_commit(tmp_path) -> None:
    """Negative control: the same code copied out of the checkout cannot name a commit."""
    shutil.copytree(PACKAGE, tmp_path / "gcnn", ignore=shutil.ignore_patterns("__pycache__"))
    probe = "import json, gcnn.provenance as p; print(json.dumps(p.code_provenance()))"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    code = json.loads(out)
    assert code["commit"] is None and code["modified"] is None
    assert code["gcnn"] == gcnn.__version__
