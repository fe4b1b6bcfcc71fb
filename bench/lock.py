"""One writer per results directory: an OS lock on ``OUT/.lock``.

`vgbench run` holds the lock for its whole invocation. The lock is
`fcntl.flock` on an open file, so the kernel releases it whenever the holder
exits, however it exits (kill -9 included): there is no stale lock to clean
up. The file also names its holder (pid, host, start time) for the message
that a second writer gets.

Readers (`report`, `compare`) take no lock: every file they read is replaced
atomically. They only check `is_free` before writing missing tables.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import socket
from pathlib import Path

from vgbench.bench.errors import UsageError

LOCK_NAME = ".lock"


class DirectoryLock:
    """The exclusive lock of a results directory, held from `acquire` to `release`.

    Usage::

        with DirectoryLock(out).acquire(wait=False):
            ...  # the only writer of ``out``
    """

    def __init__(self, out):
        self.out = Path(out)
        self.path = self.out / LOCK_NAME
        self._fd = None

    def acquire(self, wait: bool = False, on_wait=None) -> DirectoryLock:
        """Takes the lock; ``out`` must exist.

        Args:
            wait: block until the holder is done, instead of failing.
            on_wait: called with the holder's description before blocking.

        Raises:
            UsageError: another process holds the lock and ``wait`` is False.
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe(_read_holder(fd))
                if not wait:
                    raise UsageError(
                        f"--out {str(self.out)!r} is being written by another vgbench run ({holder}); "
                        "wait for it to finish or pass --wait."
                    ) from None
                if on_wait is not None:
                    on_wait(holder)
                fcntl.flock(fd, fcntl.LOCK_EX)
            holder = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        """Gives the lock up (the file stays: removing it would race with a waiting writer)."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass  # e.g. a full device; the lock goes with the descriptor anyway
        os.close(self._fd)
        self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def is_free(out) -> bool:
    """Whether no process holds ``out``'s lock now (True when there is no lock file)."""
    try:
        fd = os.open(Path(out) / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing drops the shared lock, if it was taken
    return True


def _read_holder(fd) -> dict:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    if not holder.get("pid"):
        return "holder unknown"
    return f"pid {holder['pid']} on {holder.get('host', '?')}, started {holder.get('started', '?')}"
