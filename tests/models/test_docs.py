"""The python examples of docs/models.md run as written."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "models.md"


def test_models_guide_examples_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 3, "docs/models.md lost its examples"
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), {})
