"""pynetdicom's DUL reactor, woken by events instead of polling every millisecond.

pynetdicom runs one DUL thread per association. Whenever a turn of its loop finds nothing to do it
sleeps ``_run_loop_delay`` (1 ms), then looks for a primitive to send (``to_provider_queue``) and for
data on the socket (``select`` with a zero timeout). Each C-STORE therefore waits up to a turn before
its data is read and up to a turn before its response goes out, and an idle association wakes a
thousand times a second — which, on a machine with few cores, is CPU taken from every other
association.

``install`` (called from ``EVT_CONN_OPEN``, before the DUL thread starts) keeps pynetdicom's loop but
makes its wait an event wait: the sleep becomes 0 and the socket check a ``select`` that also watches a
wake-up pipe, with a timeout of ``IDLE_WAIT``. Everything that queues a primitive for the peer (the
DIMSE responses, ACSE) goes through ``to_provider_queue.put``, which here also writes one byte to the
pipe: the reactor sends it at once. Likewise what the DUL hands up (a release or abort request) sets an
event that the association's reactor waits on with its DIMSE messages. What the loop checks on its own
(the ARTIM timer, a kill) is noticed at most ``IDLE_WAIT`` later. No pynetdicom method is replaced: the
socket's ``ready`` is overridden by a subclass and the queues are ``queue.Queue`` subclasses, all set on
the association before it runs.
Measured in bench/ingest.py (docs/ingest.md, "Speed").
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, cast

from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket

# The longest the reactor waits without an event; what only its own loop notices (ARTIM timer expiry,
# a kill at the end of the association) is seen this much later at most.
IDLE_WAIT = 0.02

# ``let_the_peer_speak``: how long a handler waits at most for the reactor to send what it queued, and
# how long it then yields so that the reactor's next turn reads the socket.
DRAIN_WAIT = 1.0
READ_TURN = 0.001


class _Wakeup:
    """A non-blocking pipe: ``wake`` from any thread, ``fileno`` for ``select``, ``drain`` after."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def fileno(self) -> int:
        return self._read

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):  # full: a wake-up is pending already
            os.write(self._write, b"\0")

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._read, 4096):
                pass

    def close(self) -> None:
        for fd in (self._read, self._write):
            with contextlib.suppress(OSError):
                os.close(fd)


class NotifyingQueue(queue.Queue[Any]):
    """A queue that calls ``notify`` after every put: the DUL's ``to_provider_queue`` wakes its reactor,
    its ``to_user_queue`` and the DIMSE message queue wake the association's reactor."""

    def __init__(self, notify: Callable[[], None]) -> None:
        super().__init__()
        self._notify = notify

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._notify()


class WakeableSocket(AssociationSocket):
    """An ``AssociationSocket`` whose ``ready`` waits for data or a wake-up, up to ``IDLE_WAIT``, and
    whose ``recv`` reads a PDU in as few calls as the kernel allows."""

    _wakeup: _Wakeup

    def recv(self, nr_bytes: int) -> bytearray:
        """``nr_bytes`` from the socket, fewer only if the peer closed it (as pynetdicom's ``recv``).

        pynetdicom reads 4096 bytes per call and appends each piece to the result: a 512 KiB PDU took
        about 130 ``recvfrom`` calls (strace -c, 100 slices of 512²). Reading into the result
        directly, each call takes whatever the socket buffer holds: 12 per slice.
        """
        sock = cast(socket.socket, self.socket)
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        nr_read = 0
        while nr_read < nr_bytes:
            got = sock.recv_into(view[nr_read:], nr_bytes - nr_read)
            if not got:  # the connection was broken: return what was read
                break
            nr_read += got
        view.release()
        if nr_read < nr_bytes:
            del buffer[nr_read:]
        return buffer

    @property
    def ready(self) -> bool:
        sock = self.socket
        if sock is None or self._is_connected is False:
            return False
        # An SSLSocket may hold decrypted data that select cannot see (as pynetdicom's own check).
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        # pynetdicom's loop checks the socket, then handles one queued event per turn. An event already
        # waiting must not wait for the socket: a new connection queues Evt5 and its A-ASSOCIATE-RQ
        # arrives with it, so the RQ's Evt6 would otherwise be handled only after a whole IDLE_WAIT
        # (20 ms of every association; measured A-ASSOCIATE-RQ to -AC: 34 ms with that wait, 13 ms without).
        timeout = 0.0 if not self.event_queue.empty() else IDLE_WAIT
        watched: list[Any] = [sock, self._wakeup]
        try:
            readable, _, _ = select.select(watched, [], [], timeout)
        except (OSError, TimeoutError, ValueError):
            self.event_queue.put("Evt17")  # the transport connection closed
            return False
        if self._wakeup in readable:
            self._wakeup.drain()
        return sock in readable


def install(assoc: Association) -> bool:
    """Make ``assoc``'s DUL reactor event-driven; False (nothing changed) if it has already started."""
    dul = assoc.dul
    sock = dul.socket
    if dul.is_alive() or sock is None or type(sock) is not AssociationSocket:
        return False
    wakeup = _Wakeup()
    weakref.finalize(sock, wakeup.close)  # the pipe lives as long as the socket object
    sock.__class__ = WakeableSocket
    sock._wakeup = wakeup  # type: ignore[attr-defined]
    dul.to_provider_queue = NotifyingQueue(wakeup.wake)
    # The association's reactor waits for DIMSE messages (``receive.StreamingDimse.get_msg``); a release
    # or abort request the DUL hands up wakes that wait too, instead of being seen after its timeout.
    signal = threading.Event()
    dul.to_user_queue = NotifyingQueue(signal.set)
    dul._dicom_node_for_user = signal  # type: ignore[attr-defined]
    dul._run_loop_delay = 0
    return True


def for_user_signal(assoc: Association) -> threading.Event | None:
    """The event set whenever ``assoc``'s DUL hands up a primitive (``install``), or None."""
    signal = getattr(assoc.dul, "_dicom_node_for_user", None)
    return signal if isinstance(signal, threading.Event) else None


def let_the_peer_speak(assoc: Association) -> None:
    """Wait until ``assoc``'s reactor has sent what is queued, then give it a turn to read the socket.

    pynetdicom's reactor either sends one queued primitive or reads the socket in a turn, never both,
    and sends first ("We can either encode and send a primitive OR receive and decode a PDU per loop",
    ``DULServiceProvider.run_reactor``). A handler that queues responses faster than they are sent
    (C-FIND's pending responses, under load) keeps it from reading anything, and a C-CANCEL is then read
    only after the last match was sent. A streaming handler calls this every few responses; it costs
    about ``READ_TURN`` each time.
    """
    outgoing = assoc.dul.to_provider_queue
    deadline = time.monotonic() + DRAIN_WAIT
    while not outgoing.empty() and time.monotonic() < deadline:
        time.sleep(0.0002)
    time.sleep(READ_TURN)
