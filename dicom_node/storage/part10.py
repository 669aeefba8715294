"""DICOM Part 10 file framing for received data sets: preamble, prefix and File Meta Information.

The edge stores each data set exactly as received, behind a file meta header it writes itself. Encoding
the six meta elements by hand (PS3.10 §7.1, always Explicit VR Little Endian) is several times cheaper
than pydicom's general writer, and this runs once per received instance.

An instance's identity is its data set, not its file meta: the meta names the sending AE (Source AE
Title), so the same bytes from two senders make two different files. ``dataset_offset`` finds where the
data set starts, and every content hash (``Instance.sha256``) covers only what follows.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

PREAMBLE = b"\x00" * 128 + b"DICM"


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
        return struct.pack("<HH2s2xI", group, element, vr, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _ui(value: str) -> bytes:
    data = value.encode("ascii", "replace")
    return data + b"\x00" if len(data) % 2 else data


def _text(value: str) -> bytes:
    data = value.encode("ascii", "replace")
    return data + b" " if len(data) % 2 else data


def file_meta(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, source_ae_title: str | None = None
) -> bytes:
    """The encoded File Meta Information group (0002,xxxx), group length first."""
    body = b"".join(
        [
            _element(0x0002, 0x0001, b"OB", b"\x00\x01"),
            _element(0x0002, 0x0002, b"UI", _ui(sop_class_uid)),
            _element(0x0002, 0x0003, b"UI", _ui(sop_instance_uid)),
            _element(0x0002, 0x0010, b"UI", _ui(transfer_syntax_uid)),
            _element(0x0002, 0x0012, b"UI", _ui(PYNETDICOM_IMPLEMENTATION_UID)),
            _element(0x0002, 0x0013, b"SH", _text(PYNETDICOM_IMPLEMENTATION_VERSION)),
            *([_element(0x0002, 0x0016, b"AE", _text(source_ae_title))] if source_ae_title else []),
        ]
    )
    return _element(0x0002, 0x0000, b"UL", struct.pack("<I", len(body))) + body


def dataset_offset(header: bytes | memoryview) -> int:
    """Where the data set starts in a Part 10 file whose first bytes are ``header``.

    Walks the (0002,xxxx) elements, which are always Explicit VR Little Endian (PS3.10 §7.1), so a
    file whose meta lacks the group length reads as well as one that has it. ``header`` must hold the
    whole meta group: 64 KiB is plenty for any real file.
    """
    buffer = memoryview(header)
    if bytes(buffer[128:132]) != b"DICM":
        raise ValueError("not a DICOM Part 10 file: no DICM prefix at byte 128")
    offset = 132
    while offset + 8 <= len(buffer):
        group, _element, vr = struct.unpack_from("<HH2s", buffer, offset)
        if group != 0x0002:
            return offset
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            (length,) = struct.unpack_from("<I", buffer, offset + 8)
            offset += 12 + length
        else:
            (length,) = struct.unpack_from("<H", buffer, offset + 6)
            offset += 8 + length
    if offset == len(buffer):
        return offset  # a file with file meta and an empty data set
    raise ValueError("the File Meta Information runs past the bytes given")


META_READ = 65536


def dataset_sha256(path: Path) -> str:
    """The sha256 of a stored file's data set: the bytes after its File Meta Information."""
    with path.open("rb") as handle:
        offset = dataset_offset(handle.read(META_READ))
        handle.seek(offset)
        return hashlib.file_digest(handle, "sha256").hexdigest()
