"""Long analysis passes report progress in plain lines when stderr is not a terminal."""

from __future__ import annotations

from gcnn.analysis.progress import progress


def test_progress_lines_when_not_a_terminal(capsys, monkeypatch) -> None:
    monkeypatch.delenv("GCNN_PROGRESS", raising=False)
    assert list(progress(range(20), desc="statistics")) == list(range(20))
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == "gcnn: statistics: 5/20 batches, " + lines[0].split(", ")[1]
    assert len(lines) == 4 and lines[-1].startswith("gcnn: statistics: done, 20/20 batches in")
    # short passes stay quiet, and GCNN_PROGRESS=0 silences everything
    assert list(progress(range(3), desc="evaluate")) == [0, 1, 2]
    monkeypatch.setenv("GCNN_PROGRESS", "0")
    assert list(progress(range(20), desc="statistics")) == list(range(20))
    assert capsys.readouterr().err == ""
