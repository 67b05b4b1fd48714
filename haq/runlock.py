"""One process per folder: an exclusive lock on a run folder or a table's runs folder.

`FolderLock` holds ``fcntl.flock`` on ``FOLDER/.lock`` and writes the holder's process id into it;
the operating system releases it when the process ends, however it ends, so a killed search
never leaves its folder locked.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = ".lock"


class FolderInUse(FileExistsError):
    """Another process holds the folder; the message names the folder and that process."""


class FolderLock:
    """An exclusive lock on `folder` (created if missing), taken by `acquire` before anything in it is
    written and kept until `release` or the end of the process."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> FolderLock:
        """Take the lock, or raise `FolderInUse` naming the holder's process id."""
        if self._fd is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise FolderInUse(f"{self.folder} is in use by process {holder} (another search or table writing "
                              "there); wait for it to finish, or choose another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
