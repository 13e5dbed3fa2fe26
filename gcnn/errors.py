"""The errors gcnn raises for things a user can fix, under one base class.

The ``gcnn`` command prints a :class:`GcnnError` as one line and exits with its
:attr:`~GcnnError.exit_code` (2 for bad input, 3 for a training run that stopped itself);
any other exception is a bug in gcnn and keeps its traceback.

- :class:`UsageError`: a bad flag, argument or configuration value.
- :class:`CheckpointError`: a weights file that cannot be read or does not fit the model.
- :class:`DataError`: a data file that is missing, truncated, corrupt or hostile
  (:class:`DataNotFoundError` when it is missing).
- :class:`RunFolderError`: a run folder that cannot be written as asked: it is finished, holds
  an unfinished run, is locked by another process (:class:`RunLockedError`), or was trained with
  other settings (:class:`ConfigMismatchError`).
- :class:`RunStopped`: training stopped itself (:class:`TrainingCollapsed`,
  :class:`TrainingDiverged`); exit code 3.

Several also derive from the built-in type they replaced (``ValueError``,
``FileNotFoundError``, ``RuntimeError``), so older ``except`` clauses keep working.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "CheckpointError",
    "ConfigMismatchError",
    "DataError",
    "DataNotFoundError",
    "GcnnError",
    "RankEcho",
    "RunFolderError",
    "RunLockedError",
    "RunStopped",
    "TrainingCollapsed",
    "TrainingDiverged",
    "UsageError",
    "one_line",
    "user_input",
]


class GcnnError(Exception):
    """An error the user can fix. The CLI prints ``gcnn <command>: <label>: <message>``."""

    exit_code: int = 2
    label: str = "error"


class UsageError(GcnnError, ValueError):
    """A bad command-line flag, argument or configuration value."""


class CheckpointError(GcnnError, ValueError):
    """A checkpoint that cannot be read, or that does not fit the model."""


class DataError(GcnnError, ValueError):
    """A data file that cannot be used: truncated, corrupt, hostile, or the wrong content."""


class DataNotFoundError(DataError, FileNotFoundError):
    """Data that is not where it was looked for; the message says how to get it."""


class RunFolderError(GcnnError):
    """A run folder that cannot be written as asked: finished, unfinished, in use, or other
    settings."""


class RunLockedError(RunFolderError):
    """Another live process holds the run folder's lock (``pid``: its process id, if known)."""

    def __init__(self, message: str, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


class ConfigMismatchError(RunFolderError):
    """A run folder written with other settings; ``differences`` names each one."""

    def __init__(self, message: str, differences: list[str]) -> None:
        super().__init__(message)
        self.differences = differences


class RankEcho(GcnnError):
    """On a DDP rank other than 0: rank 0 raised a user error (and reports it; this rank stays
    silent, the CLI prints nothing for it)."""


class RunStopped(GcnnError, RuntimeError):
    """A training run that stopped itself; no final ``model.safetensors`` was written."""

    exit_code = 3
    label = "stopped"


class TrainingCollapsed(RunStopped):
    """A ``cnn+inv`` run collapsed after its invariance loss switched on."""


class TrainingDiverged(RunStopped):
    """The training loss or the weights became non-finite (NaN or ±inf)."""


def one_line(err: BaseException) -> str:
    """``err``'s message on one line (a message re-raised by a ``DataLoader`` worker spans
    several lines and ends with the original ``Type: message``: keep that message)."""
    text = str(err).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) <= 1:
        return text
    last = lines[-1]
    name = type(err).__name__
    for prefix in (f"{type(err).__module__}.{name}: ", f"{name}: "):
        if last.startswith(prefix):
            return last[len(prefix) :]
    return " ".join(lines)


@contextmanager
def user_input(what: str = "") -> Iterator[None]:
    """Treat a ``ValueError`` / ``FileNotFoundError`` raised in the block as the user's error.

    For calls into code that validates user input but predates :class:`GcnnError` (its
    validators raise ``ValueError``): wrap *only* such a call, so that other code keeps
    showing its bugs. ``what`` (e.g. ``"--alphas"``) prefixes the message.
    """
    try:
        yield
    except GcnnError:
        raise
    except FileNotFoundError as err:
        raise DataNotFoundError(f"{what}: {one_line(err)}" if what else one_line(err)) from err
    except ValueError as err:
        raise UsageError(f"{what}: {one_line(err)}" if what else one_line(err)) from err
