"""Instance files on disk: validated UIDs → path, write to a temporary file, fsync, rename.

Layout under the storage root::

    <root>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
    <root>/.tmp/                      files being written (removed at start-up)
    <root>/.superseded/...            earlier content of re-sent instances that changed

Paths are built only from UIDs that passed ``validate_uid``, so no received value can climb out of the
root (``../``), name a device or collide with the temporary folder.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import RE_VALID_UID

from dicom_node.errors import InvalidIdentifierError, StorageFullError

UID_MAX_LENGTH = 64
TMP_DIR = ".tmp"
SUPERSEDED_DIR = ".superseded"
SUFFIX = ".dcm"


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
    """What a write produced."""

    relative_path: str
    size: int
    sha256: str


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class InstanceStore:
    """Durable instance files below one root folder."""

    def __init__(self, root: Path, *, min_free_bytes: int = 0) -> None:
        self.root = root
        self.min_free_bytes = min_free_bytes
        self.tmp = root / TMP_DIR
        self.tmp.mkdir(parents=True, exist_ok=True)

    def relative_path(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        study = validate_uid(study_uid, "Study Instance UID")
        series = validate_uid(series_uid, "Series Instance UID")
        sop = validate_uid(sop_uid, "SOP Instance UID")
        return f"{study}/{series}/{sop}{SUFFIX}"

    def path(self, relative_path: str) -> Path:
        return self.root / relative_path

    def write_temporary(self, parts: Sequence[bytes | memoryview]) -> tuple[Path, StoredFile]:
        """Write ``parts`` one after another to a fresh temporary file and fsync it.

        The caller commits or discards it. Parts are written with ``writev``, so a received data set is
        never copied into one buffer with its header.
        """
        size = sum(len(part) for part in parts)
        self._check_space(size)
        tmp_path = self.tmp / f"{secrets.token_hex(8)}.part"
        digest = hashlib.sha256()
        for part in parts:
            digest.update(part)
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
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFullError("storage is full: no space left to write the instance") from error
            raise
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

    def supersede(self, relative_path: str, sha256: str) -> Path:
        """Move the current file at ``relative_path`` aside, keeping it, before new content replaces it."""
        current = self.root / relative_path
        kept = self.root / SUPERSEDED_DIR / f"{relative_path}.{sha256[:12]}"
        kept.parent.mkdir(parents=True, exist_ok=True)
        os.replace(current, kept)
        _fsync_dir(kept.parent)
        return kept

    def discard(self, tmp_path: Path) -> None:
        tmp_path.unlink(missing_ok=True)

    def clean_temporary(self) -> int:
        """Remove leftovers of writes interrupted by a crash; returns how many were removed."""
        removed = 0
        for leftover in self.tmp.iterdir():
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

    def _check_space(self, size: int) -> None:
        if not self.min_free_bytes:
            return
        stats = os.statvfs(self.root)
        free = stats.f_bavail * stats.f_frsize
        if free - size < self.min_free_bytes:
            raise StorageFullError(
                f"storage is full: {free // 2**20} MiB free, "
                f"keeping at least {self.min_free_bytes // 2**20} MiB"
            )


def sha256_of(path: Path) -> str:
    """The sha256 of a file's bytes."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
