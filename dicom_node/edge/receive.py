"""Receiving C-STORE data sets straight into the store: pynetdicom's DIMSE layer, streaming to disk.

pynetdicom collects each data set in a ``BytesIO`` and ``event.dataset`` decodes a second copy, so an
association holds a whole instance (twice) in memory. Its own chunked receive
(``_config.STORE_RECV_CHUNKED_DATASET``) is a process-wide switch, writes to the system temporary
folder (another file system than the store, so the file would be copied, not renamed) and cannot stop
at a size limit. ``StreamingDimse`` uses the same hook as that switch, the request's data set file, but
opens an ``IncomingFile`` in the store's own temporary folder for each C-STORE request: fragments go
to disk as they arrive, with the File Meta Information (naming the calling AE) written first.

The DIMSE provider is installed on an association when the access check admits it
(``EdgeHandlers.handle_requested``), before the A-ASSOCIATE-AC goes out and so before any data.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from pynetdicom import evt
from pynetdicom._handlers import standard_dimse_sent_handler
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider, _QueueItem
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE, DimsePrimitiveType
from pynetdicom.pdu_primitives import P_DATA

from dicom_node.edge.store_response import encode_c_store_rsp
from dicom_node.edge.wakeup import NotifyingQueue, for_user_signal
from dicom_node.storage.incoming import IncomingFile
from dicom_node.storage.part10 import PREAMBLE, file_meta

LOG = logging.getLogger(__name__)

# The preamble and File Meta Information of a data set about to arrive → its file.
Opener = Callable[[bytes], IncomingFile]

# How long the association's reactor waits for the next decoded message before it looks at its other
# duties (release, abort, idle timeout) again. pynetdicom's acceptor loop polls ``get_msg(block=False)``
# after a 1 ms sleep; waiting on the queue instead wakes the handler the moment the data set is
# complete. A release or abort request wakes the wait as well (``wakeup.for_user_signal``); only the
# idle timeout and a local kill are noticed up to this much later.
MESSAGE_WAIT = 0.005


def _text(value: object, limit: int) -> str:
    # Received values go into the meta before they are validated (the instance is refused later if
    # they are wrong); clamped to their VR's length, they always encode.
    return str(value or "").rstrip("\x00 ")[:limit]


class StreamingDimse(DIMSEServiceProvider):
    """A DIMSE provider that writes each C-STORE request's data set to an ``IncomingFile``."""

    def __init__(self, assoc: Association, open_file: Opener) -> None:
        super().__init__(assoc)
        self._open_file = open_file
        self._syntaxes: dict[int, str] = {}
        self._files: list[IncomingFile] = []
        self._files_lock = threading.Lock()
        signal = for_user_signal(assoc)
        self._stirred = signal if signal is not None else threading.Event()
        self.msg_queue = NotifyingQueue(self._stirred.set)

    def get_msg(self, block: bool = False) -> _QueueItem:
        """The next decoded message; a non-blocking call waits up to ``MESSAGE_WAIT`` for one.

        pynetdicom's acceptor reactor calls ``get_msg(block=False)`` once per turn of a loop that sleeps
        1 ms first, so a complete C-STORE request waited up to a turn (about 1 ms with the wake-up) for
        its handler; a turn now ends when the message is there. Measured together with
        ``edge/wakeup.py`` (bench/README.md): py-spy puts the association thread's wait for the next
        message at 41 % of its time, all of it waiting on the DUL thread that reads the data set.

        The wait also ends when the DUL hands up a primitive (a release or abort request), so the
        reactor answers an A-RELEASE-RQ at once rather than after the rest of the wait.
        """
        if block:
            return super().get_msg(block=True)
        deadline = time.monotonic() + MESSAGE_WAIT
        while True:
            try:
                return self.msg_queue.get_nowait()
            except queue.Empty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._stirred.wait(remaining):
                return None, None
            self._stirred.clear()
            if self.msg_queue.empty():  # woken by the DUL's primitive: the reactor looks at it now
                return None, None

    def send_msg(self, primitive: DimsePrimitiveType, context_id: int) -> None:
        """Send a DIMSE message; a C-STORE response goes out as one PDV encoded by ``store_response``.

        pynetdicom's own path (kept for every other message, and for a response it must encode) also
        triggers ``EVT_DIMSE_SENT``; the fast path is taken only while nothing but pynetdicom's
        standard logging handler, which logs nothing for a C-STORE-RSP, is bound to it.
        """
        if isinstance(primitive, C_STORE) and primitive.MessageIDBeingRespondedTo is not None:
            command = encode_c_store_rsp(primitive)
            if command is not None and self._fits_one_pdu(command) and self._sent_unobserved():
                pdata = P_DATA()
                # Control header 0x03: a command, its last fragment (PS3.8 E.2). pynetdicom's setter
                # checks for [ID, PDV] lists, not the tuples its annotation names.
                value: Any = [context_id, b"\x03" + command]
                pdata.presentation_data_value_list = [value]
                self.dul.send_pdu(pdata)
                return
        super().send_msg(primitive, context_id)

    def _fits_one_pdu(self, command: bytes) -> bool:
        # A P-DATA-TF of one PDV spends 6 bytes on its item length, context ID and control header.
        limit = self.maximum_pdu_size
        return limit == 0 or len(command) <= limit - 6

    def _sent_unobserved(self) -> bool:
        handlers = self.assoc.get_handlers(evt.EVT_DIMSE_SENT)
        return all(handler is standard_dimse_sent_handler for handler, _ in handlers)  # type: ignore[misc]

    def receive_primitive(self, primitive: P_DATA) -> None:
        # A P-DATA may carry the last command fragment and the first data fragment together; each PDV
        # goes through on its own, so the file is in place before the first data byte is decoded.
        values = primitive.presentation_data_value_list
        if len(values) == 1:
            self._receive_value(primitive)
            return
        for value in values:
            single = P_DATA()
            single.presentation_data_value_list = [value]
            self._receive_value(single)

    def _receive_value(self, primitive: P_DATA) -> None:
        context_id, data = primitive.presentation_data_value_list[0]
        message = self.message
        # Control header bit 0 clear: a data set fragment (PS3.8 Annex E.2).
        if not data[0] & 1 and isinstance(message, C_STORE_RQ) and message._data_set_file is None:
            incoming = self._open(message, context_id)
            message._data_set_file = incoming  # type: ignore[assignment]
            message._data_set_path = incoming.path
        super().receive_primitive(primitive)

    def _open(self, message: C_STORE_RQ, context_id: int) -> IncomingFile:
        command = message.command_set
        header = PREAMBLE + file_meta(
            _text(command.get("AffectedSOPClassUID"), 64),
            _text(command.get("AffectedSOPInstanceUID"), 64),
            self._transfer_syntax(context_id),
            _text(self.assoc.requestor.ae_title, 16),
        )
        incoming = self._open_file(header)
        with self._files_lock:
            self._files = [f for f in self._files if not f.claimed] + [incoming]
        return incoming

    def _transfer_syntax(self, context_id: int) -> str:
        if context_id not in self._syntaxes:
            for context in self.assoc.accepted_contexts:
                if context.context_id is not None and context.transfer_syntax:
                    self._syntaxes[context.context_id] = str(context.transfer_syntax[0])
        return self._syntaxes.get(context_id, "")

    def abandon_files(self) -> None:
        """The connection closed: remove the data set files that no C-STORE handler has taken."""
        with self._files_lock:
            files, self._files = self._files, []
        for incoming in files:
            incoming.abandon()
