"""DICOM Part 10 file framing for received data sets: preamble, prefix and File Meta Information.

The edge stores each data set exactly as received, behind a file meta header it writes itself. Encoding
the six meta elements by hand (PS3.10 §7.1, always Explicit VR Little Endian) is several times cheaper
than pydicom's general writer, and this runs once per received instance.
"""

from __future__ import annotations

import struct

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

PREAMBLE = b"\x00" * 128 + b"DICM"


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
        return struct.pack("<HH2s2xI", group, element, vr, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _ui(value: str) -> bytes:
    data = value.encode("ascii")
    return data + b"\x00" if len(data) % 2 else data


def _text(value: str) -> bytes:
    data = value.encode("ascii")
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
