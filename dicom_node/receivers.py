"""More than one process accepting associations on the DICOM port (``[edge] receivers``).

pynetdicom runs every association of a process under one GIL: on four concurrent associations the node
used one core of two for its own work (bench/README.md). With ``receivers`` = N, ``serve`` starts N - 1
receiver processes beside itself; each binds the same port with ``SO_REUSEPORT`` (``SharedPortServer``)
and the kernel gives each new connection to one of them. A receiver runs the edge only (C-ECHO,
C-STORE, C-FIND, C-MOVE, C-GET, Storage Commitment with its reports, MPPS) on the same store and
index; the node's own process keeps everything else: start-up recovery, study assembly, jobs,
DICOMweb, metrics. What a receiver learns that may complete a study (an association released, an
MPPS COMPLETED, a commitment request) reaches the node through a pipe, so assembly looks again as it
does for its own associations. A receiver that dies is started again; one whose node died exits.

    python -m dicom_node.receivers --evidence-fd N     # the Settings as JSON on standard input
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

from dicom_node.config import Settings
from dicom_node.edge.scp import EdgeServer
from dicom_node.index.database import Database
from dicom_node.ops.logging import configure_logging
from dicom_node.storage.ingest import Ingest
from dicom_node.storage.store import InstanceStore

LOG = logging.getLogger(__name__)

_DELAY = struct.Struct("<d")
RESTART_DELAY = 1.0
"""Seconds before a receiver that exited is started again (doubling up to ``MAX_RESTART_DELAY``)."""
MAX_RESTART_DELAY = 30.0
PARENT_POLL = 0.5
"""Seconds between a receiver's looks at whether the node that started it still runs."""


class ReceiverProcesses:
    """The node's side: starts ``settings.receivers - 1`` receivers, restarts them, stops them."""

    def __init__(self, settings: Settings, on_evidence: Callable[[float], None]) -> None:
        self.settings = settings
        self.on_evidence = on_evidence
        self._procs: list[subprocess.Popen[bytes] | None] = []
        self._stopping = threading.Event()
        self._read_fd, self._write_fd = os.pipe()
        self._thread: threading.Thread | None = None
        self._port = 0

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self._procs if proc is not None and proc.poll() is None]

    def start(self, port: int) -> None:
        """Start the receivers on ``port`` (the node's own listener is bound to it already)."""
        self._port = port
        self._procs = [self._spawn() for _ in range(self.settings.receivers - 1)]
        self._thread = threading.Thread(target=self._supervise, name="receivers", daemon=True)
        self._thread.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        settings = self.settings.model_copy(update={"port": self._port})
        proc = subprocess.Popen(
            [sys.executable, "-m", "dicom_node.receivers", "--evidence-fd", str(self._write_fd)],
            stdin=subprocess.PIPE,
            pass_fds=(self._write_fd,),
        )
        assert proc.stdin is not None
        with proc.stdin:
            proc.stdin.write(settings.model_dump_json().encode())
        LOG.info("receiver process %d started on port %d", proc.pid, self._port)
        return proc

    def _supervise(self) -> None:
        delays = [RESTART_DELAY] * len(self._procs)
        due: list[float | None] = [None] * len(self._procs)
        buffer = b""
        while not self._stopping.is_set():
            readable, _, _ = select.select([self._read_fd], [], [], 0.25)
            if readable:
                buffer += os.read(self._read_fd, 4096)
                whole = len(buffer) - len(buffer) % _DELAY.size
                for (delay,) in _DELAY.iter_unpack(buffer[:whole]):
                    self.on_evidence(delay)
                buffer = buffer[whole:]
            now = time.monotonic()
            for index, proc in enumerate(self._procs):
                if self._stopping.is_set():
                    return
                if proc is not None and proc.poll() is not None:
                    LOG.error(
                        "receiver process %d exited with status %s; starting another in %.0f s",
                        proc.pid,
                        proc.returncode,
                        delays[index],
                    )
                    self._procs[index] = None
                    due[index] = now + delays[index]
                    delays[index] = min(2 * delays[index], MAX_RESTART_DELAY)
                when = due[index]
                if self._procs[index] is None and when is not None and now >= when:
                    due[index] = None
                    try:
                        self._procs[index] = self._spawn()
                    except OSError as error:
                        LOG.error("cannot start a receiver process: %s", error)
                        due[index] = now + delays[index]

    def signal_stop(self) -> None:
        """Ask every receiver to stop accepting and finish its associations (SIGTERM)."""
        self._stopping.set()
        for proc in self._procs:
            if proc is not None and proc.poll() is None:
                proc.terminate()

    def stop(self, grace: float = 30.0) -> None:
        """Stop the receivers: SIGTERM, then up to ``grace`` + 10 s for each, then SIGKILL."""
        self.signal_stop()
        if self._thread is not None:
            self._thread.join(timeout=5)
        deadline = time.monotonic() + grace + 10.0
        for proc in self._procs:
            if proc is None:
                continue
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                LOG.warning("receiver process %d did not stop in time; killing it", proc.pid)
                proc.kill()
                proc.wait()
        os.close(self._read_fd)
        os.close(self._write_fd)


def _evidence_writer(fd: int) -> Callable[[float], None]:
    def send(delay: float) -> None:
        try:
            os.write(fd, _DELAY.pack(delay))  # 8 bytes: one atomic write to a pipe
        except OSError as error:  # the node is gone; its next assembly pass finds the rows anyway
            LOG.debug("cannot tell the node about completion evidence: %s", error)

    return send


def run_receiver(settings: Settings, evidence_fd: int) -> int:
    """A receiver process: the edge on the shared port until SIGTERM, SIGINT or the node's death."""
    configure_logging(settings.log_level, settings.log_format)
    parent = os.getppid()
    stop = threading.Event()

    def _signalled(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _signalled)
    signal.signal(signal.SIGINT, _signalled)
    database = Database(settings.effective_database_url)
    store = InstanceStore(settings.storage_root, min_free_bytes=settings.min_free_bytes)
    edge = EdgeServer(settings, Ingest(store, database), on_evidence=_evidence_writer(evidence_fd))
    try:
        edge.start(resume=False)
        gc.freeze()  # as in serve (cli/app.py)
        while not stop.wait(PARENT_POLL):
            if os.getppid() != parent:
                LOG.error("the node that started receiver process %d is gone; stopping", os.getpid())
                break
    finally:
        edge.stop(settings.shutdown_grace)
        database.dispose()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="A receiver process of dicom-node serve.")
    parser.add_argument("--evidence-fd", type=int, required=True)
    args = parser.parse_args()
    settings = Settings.model_validate_json(sys.stdin.buffer.read())
    return run_receiver(settings, args.evidence_fd)


if __name__ == "__main__":
    sys.exit(main())
