"""A pynetdicom storage SCP for the job tests that records every C-STORE it answers (and can be slow)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.presentation import StoragePresentationContexts


@dataclass(frozen=True)
class Reception:
    """One C-STORE a ``RecordingPacs`` answered."""

    sop_instance_uid: str
    calling_ae_title: str
    at: float  # time.monotonic() when the request arrived


@dataclass
class RecordingPacs:
    """A pynetdicom storage SCP that records every C-STORE (SOP Instance UID, calling AE, time).

    ``delay`` makes it answer slowly: the handler sleeps that long before its success status, as a busy
    PACS does. It keeps nothing but the record. Same ``ae_title``/``port``/``received`` as ``Pacs``.
    """

    delay: float = 0.0
    ae_title: str = "PACS"
    port: int = 0
    receptions: list[Reception] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: Any = None

    def start(self) -> None:
        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = StoragePresentationContexts
        ae.network_timeout = ae.dimse_timeout = 120
        self._server = ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._handle_store)]
        )
        self.port = int(self._server.server_address[1])

    def _handle_store(self, event: evt.Event) -> int:
        reception = Reception(
            str(event.request.AffectedSOPInstanceUID), event.assoc.requestor.ae_title, time.monotonic()
        )
        with self._lock:
            self.receptions.append(reception)
        time.sleep(self.delay)
        return 0x0000

    def received(self) -> list[str]:
        with self._lock:
            return [r.sop_instance_uid for r in self.receptions]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
