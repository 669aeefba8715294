"""The node's exceptions.

    DicomNodeError
    ├── ConfigError                 bad settings file, environment variable or flag
    ├── IngestError                 an instance that cannot be kept; carries a DICOM status
    │   ├── InvalidIdentifierError  a missing or malformed Study/Series/SOP Instance UID (0xA900)
    │   ├── UnreadableDatasetError  the data set cannot be decoded (0xC210)
    │   ├── ConflictingInstanceError a re-sent SOP Instance UID with other content (0xA900 family)
    │   ├── StorageFullError        no space left on the storage root (0xA700)
    │   ├── StorageWriteError       the store's disk failed a write, fsync or rename (0xA700)
    │   ├── IndexUnavailableError   the index (or the audit trail) cannot be written (0xA700)
    │   ├── InstanceTooLargeError   the data set is larger than ``max_instance_bytes`` (0xA700)
    │   └── NotAdmittedError        C-STORE on an association the access check did not admit (0x0124)
    ├── QueryError                  a C-FIND/C-MOVE/C-GET or QIDO-RS query the node cannot answer
    │                               (carries a DICOM status: 0xA900 identifier does not match, 0xC000
    │                               range unable to process)
    ├── StoreMissingError           the index holds instances but the store root is missing or empty
    ├── TransientJobError           a job that may succeed on retry (database or storage briefly away)
    ├── TransientSendError          a delivery that may succeed later (peer down, timeout)
    └── PermanentSendError          a delivery that will never succeed as it is

The network edge maps ``IngestError`` subclasses to C-STORE statuses with an error comment; anything
else propagates and pynetdicom answers 0xC211.
"""

from __future__ import annotations


class DicomNodeError(Exception):
    """Root of every error the node raises on purpose."""


class ConfigError(DicomNodeError):
    """A setting is missing or has a wrong value; the message names it."""


class IngestError(DicomNodeError):
    """An instance could not be stored; ``status`` is the C-STORE status to answer."""

    status: int = 0xC210

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class InvalidIdentifierError(IngestError):
    """A UID needed to file the instance is missing or not a valid UID."""

    status = 0xA900


class UnreadableDatasetError(IngestError):
    """The received bytes are not a decodable DICOM data set."""

    status = 0xC210


class ConflictingInstanceError(IngestError):
    """An instance with this SOP Instance UID is already stored with different content."""

    status = 0xA900


class StorageFullError(IngestError):
    """The storage root has no space left."""

    status = 0xA700


class StorageWriteError(IngestError):
    """The store's file system failed a write, fsync or rename (EIO and the like)."""

    status = 0xA700


class IndexUnavailableError(IngestError):
    """The index or the audit trail could not be written; nothing was acknowledged."""

    status = 0xA700


class InstanceTooLargeError(IngestError):
    """The received data set is larger than ``max_instance_bytes``."""

    status = 0xA700


class NotAdmittedError(IngestError):
    """A C-STORE arrived on an association the access check never admitted (Refused: Not Authorized)."""

    status = 0x0124


class QueryError(DicomNodeError):
    """A query identifier that is malformed or asks what the information model does not hold.

    ``status`` is the DIMSE status to answer (0xA900 by default: identifier does not match SOP class).
    """

    status: int = 0xA900

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class StoreMissingError(DicomNodeError):
    """The index holds instances but the store root is missing or empty (a file system not mounted)."""


class TransientJobError(DicomNodeError):
    """A job failed in a way that may succeed on retry (database or storage briefly unavailable)."""


class TransientSendError(DicomNodeError):
    """A delivery failed in a way that may succeed on retry."""


class PermanentSendError(DicomNodeError):
    """A delivery failed in a way that retrying will not fix."""
