"""A received data set streamed to the store's temporary folder while it arrives, then read once.

The edge hands every data fragment of a C-STORE request to ``IncomingFile.write`` as it comes off the
network, so an association holds at most one PDU of an instance in memory, whatever its size. The file
lies in the store's own ``.tmp`` (the same file system as its final place, so committing it is a
rename, never a copy). The sha256 of the data set is computed on the way, and writing stops once the
data set passes ``max_instance_bytes`` (the rest is still read off the network, then refused).

``read_received`` then checks the file's structure (``integrity.check_complete``, over a read-only
memory map: only element headers are touched) and parses the data set once, up to the last group the
index reads (0040, long before the pixel data), for the identifiers and attributes the index keeps; a
multi-frame image a second time, up to its functional groups (5200, still before the pixel data).
"""

from __future__ import annotations

import hashlib
import mmap
import os
import threading
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID

from dicom_node.errors import IngestError, InstanceTooLargeError, UnreadableDatasetError
from dicom_node.storage.attributes import LAST_INDEXED_TAG, ReceivedInstance, describe_instance
from dicom_node.storage.frames import LAST_FRAME_TAG, is_multiframe
from dicom_node.storage.integrity import check_complete
from dicom_node.storage.store import InstanceStore, StoredFile, storage_error

# Values larger than this are not read while parsing: nothing the index keeps is that long.
DEFER_SIZE = 4096


class IncomingFile:
    """One data set being written to a temporary file as its fragments arrive.

    ``write`` runs on the association's network thread and never raises: a failed write (ENOSPC, EIO)
    is remembered and reported by ``finish``, which the C-STORE handler calls once the data set is
    complete. ``claim`` and ``abandon`` decide, under a lock, who removes the file when an
    association ends with a data set that no handler took.
    """

    def __init__(self, store: InstanceStore, header: bytes, *, limit: int) -> None:
        self.store = store
        self.path = store.temporary_path()
        # pynetdicom closes the request's file and unlinks ``name`` after the handler returns; by then
        # the file has been renamed into place or removed, and the unlink finds nothing.
        self.name = str(self.path)
        self.dataset_offset = len(header)
        self.dataset_size = 0
        self.limit = limit
        self.too_large = False
        self.error: OSError | None = None
        self.refusal: IngestError | None = None
        self._digest = hashlib.sha256()
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._claimed = False
        self._abandoned = False
        try:
            store.check_space(0)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            self._write_all(header)
        except OSError as error:
            self._fail(error)
        except IngestError as error:  # less than min_free_bytes left: nothing written
            self.refusal = error
            self._fail(None)

    # --- the file object pynetdicom's DIMSE decoder writes to ------------------------------------
    @property
    def file(self) -> IncomingFile:
        """pynetdicom calls ``.file.flush()`` after each fragment; the writes are unbuffered already."""
        return self

    def flush(self) -> None:
        pass

    def write(self, data: bytes | bytearray | memoryview) -> int:
        size = len(data)
        self.dataset_size += size
        if self._fd is None:
            return size
        if self.limit and self.dataset_size > self.limit:
            self.too_large = True
            self._close()
            self.path.unlink(missing_ok=True)  # free the disk now; the rest is only counted
            return size
        self._digest.update(data)
        try:
            self._write_all(data)
        except OSError as error:
            self._fail(error)
        return size

    def close(self) -> None:
        self._close()

    # --- the handler's side ------------------------------------------------------------------------
    @property
    def claimed(self) -> bool:
        return self._claimed

    def claim(self) -> bool:
        """Take the file for the C-STORE handler; False if the association already abandoned it."""
        with self._lock:
            if self._abandoned:
                return False
            self._claimed = True
            return True

    def abandon(self) -> None:
        """The association ended: remove the file unless a handler has taken it."""
        with self._lock:
            if self._claimed:
                return
            self._abandoned = True
        self.discard()

    def finish(self) -> StoredFile:
        """fsync and close the complete file; raise the ``IngestError`` for anything that went wrong."""
        if self.too_large:
            # Kept short: an Error Comment holds 64 characters.
            raise InstanceTooLargeError(f"{self.dataset_size} bytes exceed max_instance_bytes ({self.limit})")
        if self.refusal is not None:
            raise self.refusal
        if self.error is not None:
            raise storage_error(self.error, "write")
        assert self._fd is not None
        try:
            self.store.check_space(0)
            os.fsync(self._fd)
        except OSError as error:
            raise storage_error(error, "fsync") from error
        finally:
            self._close()
        return StoredFile(
            relative_path="",
            size=self.dataset_offset + self.dataset_size,
            sha256=self._digest.hexdigest(),
        )

    def discard(self) -> None:
        self._close()
        self.path.unlink(missing_ok=True)

    def _write_all(self, data: bytes | bytearray | memoryview) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def _fail(self, error: OSError | None) -> None:
        self.error = error
        self._close()
        self.path.unlink(missing_ok=True)

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _past_indexed_groups(tag: int, vr: str | None, length: int) -> bool:
    return tag > LAST_INDEXED_TAG


def _past_functional_groups(tag: int, vr: str | None, length: int) -> bool:
    return tag > LAST_FRAME_TAG


def _check_file(fd: int, dataset_offset: int, implicit_vr: bool) -> str | None:
    """``check_complete`` over a read-only map of the file; the failure's message, or None."""
    if os.fstat(fd).st_size <= dataset_offset:
        return None  # an empty data set: nothing to walk
    with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mapped:
        # The error is turned into text here so that no traceback still holds a view of the map
        # when it is closed.
        try:
            check_complete(memoryview(mapped)[dataset_offset:], implicit_vr=implicit_vr)
        except UnreadableDatasetError as error:
            return str(error)
    return None


def read_received(
    path: Path,
    dataset_offset: int,
    transfer_syntax_uid: str,
    *,
    requested_sop_class_uid: str,
    requested_sop_instance_uid: str,
) -> ReceivedInstance:
    """Check a received file's data set is complete and parse it once, without its pixel data.

    The parse starts at ``dataset_offset`` (the file meta was written by the edge and needs no
    reading) and stops after group 0020; values over ``DEFER_SIZE`` are skipped, not read.
    """
    syntax = UID(transfer_syntax_uid)
    try:
        with path.open("rb") as handle:
            if syntax.is_little_endian and not syntax.is_deflated:
                failure = _check_file(handle.fileno(), dataset_offset, syntax.is_implicit_VR)
                if failure is not None:
                    raise UnreadableDatasetError(failure)
            if syntax.is_deflated:  # pydicom inflates it (rare: a deflated data set)
                ds: Dataset = dcmread(handle, stop_before_pixels=True, defer_size=DEFER_SIZE)
            else:
                handle.seek(dataset_offset)
                ds = read_dataset(
                    handle,
                    syntax.is_implicit_VR,
                    syntax.is_little_endian,
                    stop_when=_past_indexed_groups,
                    defer_size=DEFER_SIZE,
                )
                if is_multiframe(ds):
                    # Its geometry lies in the functional groups (group 5200): parsed again up to them,
                    # nothing deferred (the functional groups are one long sequence that a deferred
                    # value would read from the file a second time).
                    handle.seek(dataset_offset)
                    ds = read_dataset(
                        handle,
                        syntax.is_implicit_VR,
                        syntax.is_little_endian,
                        stop_when=_past_functional_groups,
                    )
    except UnreadableDatasetError:
        raise
    except Exception as error:  # pydicom raises many types on corrupt input
        raise UnreadableDatasetError(f"cannot decode data set: {error}") from error
    return describe_instance(
        ds,
        transfer_syntax_uid=transfer_syntax_uid,
        requested_sop_class_uid=requested_sop_class_uid,
        requested_sop_instance_uid=requested_sop_instance_uid,
    )
