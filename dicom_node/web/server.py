"""The DICOMweb listener: uvicorn serving ``web.app`` in a thread of ``serve``.

uvicorn runs its own event loop in that thread (it installs signal handlers only in the main thread,
so ``serve`` keeps its own). Its access log is off: it would print query strings, which may carry a
patient's name; ``web.app.AccessLog`` writes the line instead.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time

import uvicorn

from dicom_node.config import AccessPolicy, DicomWebSettings
from dicom_node.index.database import Database
from dicom_node.storage.ingest import Ingest
from dicom_node.storage.store import InstanceStore
from dicom_node.web.app import PREFIX, build_app

LOG = logging.getLogger(__name__)
START_TIMEOUT = 30.0


class WebServer:
    """Start and stop the DICOMweb listener; ``url`` once it listens."""

    def __init__(
        self,
        settings: DicomWebSettings,
        access: AccessPolicy,
        database: Database,
        store: InstanceStore,
        ingest: Ingest,
    ) -> None:
        self.settings = settings
        app = build_app(settings, access, database, store, ingest)
        tls = settings.tls
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
            ssl_certfile=str(tls.certificate) if tls else None,
            ssl_keyfile=str(tls.private_key) if tls else None,
            ssl_ca_certs=str(tls.ca_certificates) if tls and tls.ca_certificates else None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if tls and tls.require_client_certificate else ssl.CERT_NONE,
        )
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        self.address: tuple[str, int] | None = None

    @property
    def url(self) -> str:
        assert self.address is not None
        scheme = "https" if self.settings.tls else "http"
        host, port = self.address
        host = f"[{host}]" if ":" in host else host
        return f"{scheme}://{host}:{port}{PREFIX}"

    def start(self) -> tuple[str, int]:
        self._thread = threading.Thread(target=self.server.run, name="dicomweb", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise OSError(
                    f"DICOMweb could not listen on {self.settings.host}:{self.settings.port} (see the log)"
                )
            time.sleep(0.02)
        sockets = [sock for server in self.server.servers for sock in server.sockets]
        bound = sockets[0].getsockname()
        self.address = (str(bound[0]), int(bound[1]))
        LOG.info("DICOMweb listening on %s", self.url, extra={"url": self.url})
        return self.address

    def stop(self, grace: float = 5.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=grace)
