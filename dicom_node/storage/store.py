"""Instance files on disk: validated UIDs → path, write to a temporary file, fsync, rename.

Layout under the storage root::

    <root>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
    <root>/.tmp/<host>.<pid>-<start>.<token>.part     files being written
    <root>/.tmp/<host>.<pid>-<start>.<token>.intent   a replacement in progress (see ingest.py)
    <root>/.superseded/<path>.<sha256 prefix>         earlier content of re-sent instances that changed

Paths are built only from UIDs that passed ``validate_uid``, so no received value can climb out of the
root (``../``), name a device or collide with the temporary folder.

Temporary names carry the host name and the process (pid and its start time, so a pid reused after a
restart, pid 1 in a container above all, is not taken for the old process). Several nodes and workers
may share one store; start-up recovery removes only leftovers of its own host's processes that are no
longer running, never another host's files in flight.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from pydicom.uid import RE_VALID_UID

from dicom_node.errors import InvalidIdentifierError, StorageFullError, StorageWriteError

LOG = logging.getLogger(__name__)
UID_MAX_LENGTH = 64
TMP_DIR = ".tmp"
SUPERSEDED_DIR = ".superseded"
SUFFIX = ".dcm"
PART = "part"
INTENT = "intent"
# Temporary files named before names carried their host (older versions) are removed once this old.
LEGACY_TEMPORARY_AGE = 24 * 3600.0


def validate_uid(value: object, attribute: str) -> str:
    """Return ``value`` as a UID string or raise ``InvalidIdentifierError`` naming ``attribute``.

    DICOM PS3.5 §9.1: components of digits separated by dots, no leading zeros, at most 64 characters.
    A trailing NUL (padding) is tolerated and stripped.
    """
    if value is None:
        raise InvalidIdentifierError(f"{attribute} is missing")
    text = str(value).rstrip("\x00").strip()
    if not text:
        raise InvalidIdentifierError(f"{attribute} is empty")
    if len(text) > UID_MAX_LENGTH:
        raise InvalidIdentifierError(f"{attribute} is longer than {UID_MAX_LENGTH} characters")
    if not RE_VALID_UID.match(text):  # pydicom's PS3.5 §9.1 rule (UID.is_valid without building a UID)
        shown = text if len(text) <= UID_MAX_LENGTH else text[:UID_MAX_LENGTH] + "…"
        raise InvalidIdentifierError(f"{attribute} {shown!r} is not a valid UID")
    return text


@dataclass(frozen=True)
class StoredFile:
    """What a write produced: the file's size and the sha256 of its data set (not of its file meta)."""

    relative_path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Intent:
    """A replacement of ``old_path`` (content ``old_sha256``) by new content, written before it starts.

    ``kept`` is where the earlier file is linked under ``.superseded``. Recovery reads the intents of
    processes that died: if the index row already holds ``new_sha256`` the replacement committed,
    otherwise it is rolled back from ``kept`` (the new content was never acknowledged).
    """

    sop_instance_uid: str
    old_path: str
    old_sha256: str
    new_path: str
    new_sha256: str
    kept: str


def _start_time(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot, or None if no such process runs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return "?"
    # Field 2 (comm) may hold spaces and parentheses; the fields after the last ')' start at field 3.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else "?"


HOST = socket.gethostname()


def process_tag() -> str:
    """``<pid>-<start time>`` of this process, as temporary names carry it."""
    pid = os.getpid()
    return f"{pid}-{_start_time(pid) or '0'}"


def _owner(name: str) -> tuple[str, str] | None:
    """(host, process tag) of a temporary file name, or None for a name in an older format."""
    parts = name.rsplit(".", 3)
    if len(parts) != 4 or parts[3] not in (PART, INTENT) or "-" not in parts[1]:
        return None
    return parts[0], parts[1]


def _process_alive(tag: str) -> bool:
    pid_text, _, start = tag.partition("-")
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    current = _start_time(pid)
    return current is not None and (current == start or current == "?" or start == "0")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def storage_error(error: OSError, doing: str) -> StorageFullError | StorageWriteError:
    """The ``IngestError`` for an ``OSError`` of the store's file system (ENOSPC → full)."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFullError("storage is full: no space left to write the instance")
    return StorageWriteError(f"storage {doing} failed: {error.strerror or error}")


class InstanceStore:
    """Durable instance files below one root folder."""

    def __init__(self, root: Path, *, min_free_bytes: int = 0) -> None:
        self.root = root
        self.min_free_bytes = min_free_bytes
        self.tmp = root / TMP_DIR
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._tag = process_tag()
        self._pid = os.getpid()

    def relative_path(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        study = validate_uid(study_uid, "Study Instance UID")
        series = validate_uid(series_uid, "Series Instance UID")
        sop = validate_uid(sop_uid, "SOP Instance UID")
        return f"{study}/{series}/{sop}{SUFFIX}"

    def path(self, relative_path: str) -> Path:
        return self.root / relative_path

    def temporary_path(self, kind: str = PART) -> Path:
        """A fresh name in the temporary folder that says which host and process wrote it."""
        if os.getpid() != self._pid:  # a forked worker child is another process
            self._tag, self._pid = process_tag(), os.getpid()
        return self.tmp / f"{HOST}.{self._tag}.{secrets.token_hex(8)}.{kind}"

    def write_temporary(
        self, parts: Sequence[bytes | memoryview], *, dataset_offset: int = 0
    ) -> tuple[Path, StoredFile]:
        """Write ``parts`` one after another to a fresh temporary file and fsync it.

        The caller commits or discards it. Parts are written with ``writev``, so they are never copied
        into one buffer. The sha256 covers the bytes from ``dataset_offset`` on: the data set.
        """
        size = sum(len(part) for part in parts)
        self.check_space(size)
        tmp_path = self.temporary_path()
        digest = hashlib.sha256()
        skip = dataset_offset
        for part in parts:
            view = memoryview(part)
            if skip >= len(view):
                skip -= len(view)
                continue
            digest.update(view[skip:])
            skip = 0
        try:
            fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                pending = [memoryview(part) for part in parts if len(part)]
                while pending:
                    written = os.writev(fd, pending)
                    while pending and written >= len(pending[0]):
                        written -= len(pending[0])
                        pending.pop(0)
                    if pending and written:
                        pending[0] = pending[0][written:]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as error:
            tmp_path.unlink(missing_ok=True)
            raise storage_error(error, "write") from error
        return tmp_path, StoredFile(relative_path="", size=size, sha256=digest.hexdigest())

    def commit(self, tmp_path: Path, relative_path: str) -> Path:
        """Atomically move a written temporary file to its final place and make the rename durable."""
        final = self.root / relative_path
        created_dirs = not final.parent.exists()
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp_path, final)
        _fsync_dir(final.parent)
        if created_dirs:
            _fsync_dir(final.parent.parent)
            _fsync_dir(self.root)
        return final

    def kept_path(self, relative_path: str, sha256: str) -> Path:
        return self.root / SUPERSEDED_DIR / f"{relative_path}.{sha256[:12]}"

    def keep_copy(self, relative_path: str, sha256: str) -> Path:
        """Link the current file at ``relative_path`` under ``.superseded`` before new content replaces it.

        A hard link, not a move: the current file stays in place until the new one is renamed over it,
        so there is no moment at which the path is empty. A copy of the same content (the same name)
        that is already kept is kept as it is.
        """
        kept = self.kept_path(relative_path, sha256)
        kept.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.link(self.root / relative_path, kept)
        _fsync_dir(kept.parent)
        return kept

    def restore(self, kept: Path, relative_path: str) -> None:
        """Put a kept copy back at ``relative_path`` (undoing a replacement) and drop the kept name."""
        final = self.root / relative_path
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(kept, final)
        # rename() of two links to one file does nothing (POSIX): then the kept name is still there.
        kept.unlink(missing_ok=True)
        _fsync_dir(final.parent)

    def write_intent(self, intent: Intent) -> Path:
        """Record ``intent`` durably in the temporary folder; ``drop_intent`` once it is done."""
        path = self.temporary_path(INTENT)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            os.write(fd, json.dumps(asdict(intent)).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(self.tmp)
        return path

    def drop_intent(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def discard(self, tmp_path: Path) -> None:
        tmp_path.unlink(missing_ok=True)

    def _leftovers(self) -> Iterator[tuple[Path, str]]:
        """Temporary files of this host's processes that are no longer running, with their kind."""
        for leftover in self.tmp.iterdir():
            owner = _owner(leftover.name)
            if owner is None:
                try:
                    old = time.time() - leftover.stat().st_mtime > LEGACY_TEMPORARY_AGE
                except FileNotFoundError:
                    continue
                if old:
                    yield leftover, PART
                continue
            host, tag = owner
            if host == HOST and tag != self._tag and not _process_alive(tag):
                yield leftover, leftover.suffix.lstrip(".")

    def dead_intents(self) -> Iterator[tuple[Path, Intent]]:
        """Intents left by this host's processes that died mid-replacement."""
        for path, kind in list(self._leftovers()):
            if kind != INTENT:
                continue
            try:
                intent = Intent(**json.loads(path.read_text()))
            except (ValueError, TypeError):
                # Cut short before its fsync: the replacement it announces had not started.
                LOG.warning("removing an incomplete intent record %s", path.name)
                path.unlink(missing_ok=True)
                continue
            yield path, intent

    def clean_temporary(self) -> int:
        """Remove leftovers of writes interrupted by a crash (this host's dead processes only)."""
        removed = 0
        for leftover, _kind in list(self._leftovers()):
            leftover.unlink(missing_ok=True)
            removed += 1
        return removed

    def iter_instance_files(self) -> Iterator[str]:
        """Every committed instance file, as a path relative to the root."""
        for study_dir in self.root.iterdir():
            if study_dir.name.startswith(".") or not study_dir.is_dir():
                continue
            for series_dir in study_dir.iterdir():
                if not series_dir.is_dir():
                    continue
                for file in series_dir.iterdir():
                    if file.suffix == SUFFIX:
                        yield f"{study_dir.name}/{series_dir.name}/{file.name}"

    def check_space(self, size: int) -> None:
        """Raise ``StorageFullError`` if writing ``size`` more bytes would leave under ``min_free_bytes``."""
        if not self.min_free_bytes:
            return
        stats = os.statvfs(self.root)
        free = stats.f_bavail * stats.f_frsize
        if free - size < self.min_free_bytes:
            raise StorageFullError(
                f"storage is full: {free // 2**20} MiB free, "
                f"keeping at least {self.min_free_bytes // 2**20} MiB"
            )
