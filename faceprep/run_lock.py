"""One faceprep run per output folder: an advisory lock on ``DST/.faceprep.lock``, held for the run.

The lock is ``flock`` on an open file (released by the kernel when the process dies, so a ``kill -9``
never leaves a stale lock). The file holds who took it (pid, host, start time) so a second run can say
who is in the way. On systems without ``fcntl`` (Windows) ``msvcrt.locking`` does the same.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

LOCK_FILE = ".faceprep.lock"


class DatasetLockedError(RuntimeError):
    """Another run holds the output folder."""


class DatasetLock:
    """``with DatasetLock(dst):`` holds ``dst``'s lock or raises :class:`DatasetLockedError` at once."""

    def __init__(self, dst: str | os.PathLike[str]) -> None:
        self.path = Path(dst) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> DatasetLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_lock(fd):
            os.close(fd)
            raise DatasetLockedError(
                f"{self.path.parent} is in use by another faceprep run ({self.holder()}); "
                "wait for it to finish or write to another folder"
            )
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%F %T")}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(owner).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            _unlock(self._fd)
            os.close(self._fd)
            self._fd = None

    def holder(self) -> str:
        """Who holds the lock, as recorded in the lock file ("unknown" when it cannot be read)."""
        try:
            owner = json.loads(self.path.read_text(encoding="utf-8"))
            return f"pid {owner['pid']} on {owner['host']}, since {owner['started']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "holder unknown"

    def __enter__(self) -> DatasetLock:
        return self.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


try:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)

except ImportError:  # pragma: no cover - Windows
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined]
