"""An OS-level lock per run folder: ``fcntl.flock`` on ``.seed<N>.lock``.

The kernel releases a ``flock`` when its holder exits in any way (``SIGKILL`` included), so a
lock can never be left stale by a crash; the file itself stays and is reused. The holder writes
its PID into the file so that a refused writer can name it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from gcnn.errors import RunLockedError

__all__ = ["RunLock"]


class RunLock:
    """An exclusive, non-blocking lock on ``path`` (a context manager).

    :meth:`acquire` raises :class:`~gcnn.errors.RunLockedError` naming the holder's PID when
    another process holds it. ``what`` describes the locked thing in that message.
    """

    def __init__(self, path: str | Path, what: str | None = None) -> None:
        self.path = Path(path)
        self.what = what or str(self.path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> int | None:
        """The PID written by the current (or last) holder, if readable."""
        try:
            text = self.path.read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def acquire(self) -> RunLock:
        if self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = self.holder()
            who = f"process {pid}" if pid is not None else "another process"
            raise RunLockedError(
                f"{self.what} is in use by {who} (lock {self.path}): wait for it to finish, "
                f"or stop it{f' (kill {pid})' if pid is not None else ''} and then pass --resume",
                pid,
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
