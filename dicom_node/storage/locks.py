"""A lock that holds across processes: ``flock`` on a file, opened anew in each process.

Several processes may keep instances in one store at once (receiver processes sharing the DICOM port,
workers publishing results); the rename and index commit of one SOP Instance UID must not interleave
between them (storage/ingest.py). ``flock`` belongs to the open file, which a forked child shares with
its parent, so the file is opened again whenever the process id has changed.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path
from types import TracebackType


class ProcessLock:
    """Exclusive between processes (``flock``) and between the threads of one (a ``threading.Lock``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._threads = threading.Lock()
        self._fd = -1
        self._pid = -1

    def _descriptor(self) -> int:
        if self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = os.getpid()
        return self._fd

    def __enter__(self) -> ProcessLock:
        self._threads.acquire()
        try:
            fcntl.flock(self._descriptor(), fcntl.LOCK_EX)
        except BaseException:
            self._threads.release()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()
