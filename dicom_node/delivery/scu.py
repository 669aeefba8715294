"""A C-ECHO / C-STORE SCU for the CLI and the result sender.

Sends files as they are on disk (chunked, never decoded or transcoded), proposing for each SOP class the
transfer syntax the file is in, and sets TCP_NODELAY on the association's socket (without it a
pynetdicom sender runs at about a third of its speed, see DESIGN.md).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import UID
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.status import STATUS_SUCCESS, STATUS_WARNING, code_to_category

from dicom_node.config import DEFAULT_TIMEOUTS, Destination, DimseTimeouts
from dicom_node.delivery.tls import tls_arguments

MAX_CONTEXTS = 128


@dataclass(frozen=True)
class FileToSend:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


@dataclass
class SendReport:
    """What happened to each file: SOP Instance UID → DIMSE status (or -1 when not sent)."""

    statuses: dict[str, int] = field(default_factory=dict)
    comments: dict[str, str] = field(default_factory=dict)

    @property
    def sent(self) -> int:
        return sum(1 for s in self.statuses.values() if is_success(s))

    @property
    def failed(self) -> int:
        return len(self.statuses) - self.sent


def iter_dicom_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Files under ``paths`` (recursively for folders), in a stable order."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


def read_header(path: Path) -> FileToSend:
    """The identifiers needed to propose and send ``path``; raises on a file that is not DICOM."""
    ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
    meta = ds.file_meta
    sop_class = str(ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID", ""))
    sop_instance = str(ds.get("SOPInstanceUID") or meta.get("MediaStorageSOPInstanceUID", ""))
    return FileToSend(path, sop_class, sop_instance, str(meta.TransferSyntaxUID))


def set_nodelay(assoc: Association) -> None:
    sock = assoc.dul.socket
    if sock is not None and sock.socket is not None:
        sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def make_ae(calling_ae_title: str, timeouts: DimseTimeouts = DEFAULT_TIMEOUTS) -> AE:
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = timeouts.acse
    ae.dimse_timeout = timeouts.dimse
    ae.network_timeout = timeouts.network
    ae.maximum_pdu_size = 0
    return ae


class _ConnectFailure(logging.Handler):
    """Catches the reason pynetdicom only logs when it cannot connect (a refused port, a TLS handshake
    that failed: "certificate verify failed …"); ``reason_for`` picks the one its DUL thread logged."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.reasons: dict[int | None, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(_CONNECT_ERROR):
            self.reasons[record.thread] = message[len(_CONNECT_ERROR) :].strip()

    def reason_for(self, assoc: Association) -> str | None:
        return self.reasons.get(assoc.dul.ident)


_CONNECT_ERROR = "TCP Initialisation Error:"
_TRANSPORT_LOG = logging.getLogger("pynetdicom.transport")


def associate(ae: AE, destination: Destination) -> Association:
    """An established association with ``destination`` (over TLS when it says ``tls = true``, never in
    clear text then); ``ConnectionError`` naming the reason when there is none."""
    failure = _ConnectFailure()
    _TRANSPORT_LOG.addHandler(failure)
    try:
        assoc = ae.associate(
            destination.host,
            destination.port,
            ae_title=destination.ae_title,
            tls_args=tls_arguments(destination),
        )
    finally:
        _TRANSPORT_LOG.removeHandler(failure)
    if not assoc.is_established:
        raise ConnectionError(_why_not_established(assoc, destination, failure.reason_for(assoc)))
    set_nodelay(assoc)
    return assoc


def echo(destination: Destination, calling_ae_title: str, timeouts: DimseTimeouts = DEFAULT_TIMEOUTS) -> int:
    """C-ECHO; returns the DIMSE status, raises ``ConnectionError`` if no association was made."""
    ae = make_ae(calling_ae_title, timeouts)
    ae.add_requested_context(Verification)
    assoc = associate(ae, destination)
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if "Status" in status else -1
    finally:
        assoc.release()


def _why_not_established(assoc: Association, destination: Destination, reason: str | None = None) -> str:
    if assoc.is_rejected:
        rj = assoc.acceptor.primitive
        if rj is not None:
            return (
                f"{destination.address} rejected the association "
                f"(result {rj.result}, source {rj.result_source}, reason {rj.diagnostic})"
            )
        return f"{destination.address} rejected the association"
    if assoc.acceptor.primitive is None:
        # pynetdicom reports a refused TCP connection (or a failed TLS handshake) as an abort with no
        # A-ASSOCIATE response, and only logs why.
        over = " over TLS" if destination.tls else ""
        if reason:
            return f"could not connect to {destination.address}{over}: {reason}"
        return f"could not connect to {destination.address}{over} (nothing listening, or the peer closed it)"
    return f"{destination.address} aborted the association"


def _batches(files: Sequence[FileToSend]) -> Iterator[list[FileToSend]]:
    """Split into groups that fit in one association's 128 presentation contexts."""
    batch: list[FileToSend] = []
    contexts: set[tuple[str, str]] = set()
    for item in files:
        key = (item.sop_class_uid, item.transfer_syntax_uid)
        if key not in contexts and len(contexts) == MAX_CONTEXTS:
            yield batch
            batch, contexts = [], set()
        contexts.add(key)
        batch.append(item)
    if batch:
        yield batch


def send_files(
    destination: Destination,
    files: Sequence[FileToSend],
    calling_ae_title: str,
    *,
    timeouts: DimseTimeouts = DEFAULT_TIMEOUTS,
    on_sent: Callable[[FileToSend, int], None] | None = None,
) -> SendReport:
    """C-STORE ``files`` to ``destination``; raises ``ConnectionError`` if no association is made."""
    report = SendReport()
    for batch in _batches(files):
        ae = make_ae(calling_ae_title, timeouts)
        for sop_class, syntax in sorted({(f.sop_class_uid, f.transfer_syntax_uid) for f in batch}):
            ae.add_requested_context(sop_class, syntax)
        assoc = associate(ae, destination)
        try:
            for item in batch:
                if not assoc.is_established:
                    raise ConnectionError(f"{destination.address} ended the association")
                try:
                    response = assoc.send_c_store(item.path)
                except ValueError as error:  # no accepted context for this SOP class / syntax
                    report.statuses[item.sop_instance_uid] = -1
                    report.comments[item.sop_instance_uid] = str(error)
                    if on_sent:
                        on_sent(item, -1)
                    continue
                status = int(response.Status) if "Status" in response else -1
                report.statuses[item.sop_instance_uid] = status
                if "ErrorComment" in response:
                    report.comments[item.sop_instance_uid] = str(response.ErrorComment)
                if on_sent:
                    on_sent(item, status)
        finally:
            if assoc.is_established:
                assoc.release()
    return report


def is_success(status: int) -> bool:
    """Success or a warning (PS3.7 Annex C: 0xB000–0xBFFF coercion, 0x0107, 0x0116) counts as stored.

    ``status`` is -1 when no response came; that, like every failure, cancel or unknown code, is not.
    """
    return status >= 0 and code_to_category(status) in {STATUS_SUCCESS, STATUS_WARNING}


def transfer_syntax_name(uid: str) -> str:
    return UID(uid).name
