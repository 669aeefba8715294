"""Is a received data set complete? A structural walk over its encoding, without decoding values.

pydicom reads a truncated stream leniently: a short value is kept short, and encapsulated pixel data
without its sequence delimiter is dropped with only a warning. A node that acknowledges such an
instance has lost data, so the edge walks every element header (and every item of undefined-length
sequences and encapsulated pixel data) and refuses the instance if any declared length runs past the
end. Little endian transfer syntaxes only (implicit, explicit, and every encapsulated one); deflated
streams are checked after inflation by zlib itself, and retired big endian is not walked.
"""

from __future__ import annotations

import struct

from dicom_node.errors import UnreadableDatasetError

UNDEFINED = 0xFFFFFFFF
ITEM = 0xFFFEE000
ITEM_END = 0xFFFEE00D
SEQUENCE_END = 0xFFFEE0DD
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_MAX_DEPTH = 32


class _Truncated(Exception):
    pass


def _tag(buffer: memoryview, offset: int) -> int:
    group, element = struct.unpack_from("<HH", buffer, offset)
    return int(group << 16 | element)


def _need(buffer: memoryview, offset: int, size: int) -> None:
    if offset + size > len(buffer):
        raise _Truncated(offset)


def _walk_items(buffer: memoryview, offset: int, implicit: bool, depth: int) -> int:
    """Items of an undefined-length sequence or encapsulated value, up to its delimiter."""
    while True:
        _need(buffer, offset, 8)
        tag = _tag(buffer, offset)
        (length,) = struct.unpack_from("<I", buffer, offset + 4)
        offset += 8
        if tag == SEQUENCE_END:
            return offset
        if tag != ITEM:
            raise _Truncated(offset)
        if length == UNDEFINED:
            offset = _walk_dataset(buffer, offset, implicit, depth + 1, until_item_end=True)
        else:
            _need(buffer, offset, length)
            offset += length


def _walk_dataset(buffer: memoryview, offset: int, implicit: bool, depth: int, until_item_end: bool) -> int:
    if depth > _MAX_DEPTH:
        raise _Truncated(offset)
    end = len(buffer)
    while offset < end:
        _need(buffer, offset, 8)
        tag = _tag(buffer, offset)
        if tag == ITEM_END:
            return offset + 8
        if implicit or tag >> 16 == 0xFFFE:
            (length,) = struct.unpack_from("<I", buffer, offset + 4)
            offset += 8
        else:
            vr = bytes(buffer[offset + 4 : offset + 6])
            if vr in _LONG_VRS:
                _need(buffer, offset, 12)
                (length,) = struct.unpack_from("<I", buffer, offset + 8)
                offset += 12
            else:
                (length,) = struct.unpack_from("<H", buffer, offset + 6)
                offset += 8
        if length == UNDEFINED:
            offset = _walk_items(buffer, offset, implicit, depth)
        else:
            _need(buffer, offset, length)
            offset += length
    if until_item_end:
        raise _Truncated(offset)
    return offset


def check_complete(dataset: bytes | memoryview, *, implicit_vr: bool) -> None:
    """Raise ``UnreadableDatasetError`` if the little endian ``dataset`` encoding is cut short."""
    buffer = memoryview(dataset)
    try:
        _walk_dataset(buffer, 0, implicit_vr, 0, until_item_end=False)
    except (_Truncated, struct.error):
        raise UnreadableDatasetError(
            f"the data set is truncated or malformed ({len(buffer)} bytes received)"
        ) from None
