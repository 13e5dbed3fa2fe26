"""Which code wrote a file: recorded in training sidecars and ``check``/``compare`` reports.

A number in a committed result is only reproducible with the code that computed it; the
package version alone does not say that (it stays ``0.1.0`` across many commits).
"""

from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path

import torch

import gcnn

_PACKAGE = Path(gcnn.__file__).resolve().parent


def _git(*args: str) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(
            ["git", "-C", str(_PACKAGE), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


@functools.lru_cache(maxsize=1)
def code_provenance() -> dict[str, object]:
    """``{"gcnn", "commit", "modified", "torch", "python"}`` of this process.

    ``commit``: the git commit of the checkout the ``gcnn`` package was imported from (``None``
    when the package is not tracked by a git checkout, e.g. an installed wheel, even one inside
    another repository); ``modified``: whether tracked files under the package differ from that
    commit (``None`` without a commit) — a ``true`` means the numbers came from uncommitted code.
    """
    # the package itself must be tracked: an installed copy can sit inside someone's repo
    tracked = _git("ls-files", "--error-unmatch", "__init__.py")
    head = _git("rev-parse", "HEAD") if tracked is not None and tracked.returncode == 0 else None
    commit = head.stdout.strip() if head is not None and head.returncode == 0 else None
    modified = None
    if commit is not None:
        diff = _git("diff", "--quiet", "HEAD", "--", ".")
        modified = None if diff is None or diff.returncode not in (0, 1) else diff.returncode == 1
    return {
        "gcnn": gcnn.__version__,
        "commit": commit,
        "modified": modified,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
