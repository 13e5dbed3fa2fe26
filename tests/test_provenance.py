"""``gcnn.provenance``: the commit recorded in sidecars and reports is the code's own."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.parametrize("inside_another_repo", [False, True])
def test_a_copy_of_the_package_records_no_commit(tmp_path, inside_another_repo: bool) -> None:
    """Negative controls: the same code copied out of the checkout — alone, or untracked inside
    some other repository (an installed copy in a project's virtual environment) — cannot name
    a commit: the other repository's HEAD is not this code's."""
    if inside_another_repo:
        git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
        subprocess.run([*git, "init", "-q"], check=True)
        (tmp_path / "notes.txt").write_text("x")
        subprocess.run([*git, "add", "notes.txt"], check=True)
        subprocess.run([*git, "commit", "-qm", "x"], check=True)
    shutil.copytree(PACKAGE, tmp_path / "gcnn", ignore=shutil.ignore_patterns("__pycache__"))
    probe = "import json, gcnn.provenance as p; print(json.dumps(p.code_provenance()))"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    code = json.loads(out)
    assert code["commit"] is None and code["modified"] is None
    assert code["gcnn"] == gcnn.__version__
