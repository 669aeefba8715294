"""WADO-RS: instances, metadata, frames and bulk data of what the index holds (PS3.18 §10.4).

Files are read from the store by their indexed path. An instance goes out as stored when the client
accepts its transfer syntax (``*`` included); otherwise, where the client asks for an uncompressed
syntax, pydicom decodes and re-encodes it (``transcode``); anything else is refused (406). Frames go out
as stored (their compressed media type) or, asked as ``application/octet-stream``, decoded.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels.utils import pixel_array
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, ExplicitVRLittleEndian
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from dicom_node.index.database import Database
from dicom_node.index.models import Instance, Series, Study
from dicom_node.storage.store import InstanceStore
from dicom_node.web.media import (
    ANY_SYNTAX,
    DICOM,
    FRAME_MEDIA_TYPES,
    OCTET_STREAM,
    MediaRange,
    default_syntax,
    is_uncompressed,
)

LOG = logging.getLogger(__name__)
PIXEL_TAGS = (Tag(0x7FE00010), Tag(0x7FE00008), Tag(0x7FE00009))  # Pixel Data, Float, Double Float
BINARY_VRS = ("OB", "OD", "OF", "OL", "OV", "OW", "UN")
INLINE_LIMIT = 16 * 1024
"""Binary values of the top-level data set above this are given as BulkDataURIs, not inline."""


class NotFoundError(LookupError):
    """Nothing the index holds matches the path (404)."""


class NotAcceptableError(ValueError):
    """No media type or transfer syntax the client accepts can be produced (406)."""


@dataclass(frozen=True)
class Located:
    """An indexed instance with the UIDs of its parents."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: Path

    @property
    def url_path(self) -> str:
        return (
            f"/studies/{self.study_instance_uid}/series/{self.series_instance_uid}"
            f"/instances/{self.sop_instance_uid}"
        )


def locate(
    database: Database,
    store: InstanceStore,
    study: str,
    series: str | None = None,
    instance: str | None = None,
) -> list[Located]:
    """The instances under a study, a series or one instance, in the index's order; ``NotFoundError``."""
    with database.session() as session:
        statement = (
            select(Study)
            .where(Study.study_instance_uid == study)
            .options(selectinload(Study.series).selectinload(Series.instances))
        )
        found = session.scalars(statement).first()
        if found is None:
            raise NotFoundError(f"no study {study}")
        located: list[Located] = []
        for each in found.series:
            if series is not None and each.series_instance_uid != series:
                continue
            for row in each.instances:
                if instance is not None and row.sop_instance_uid != instance:
                    continue
                located.append(_located(found, each, row, store))
    if not located:
        what = f"instance {instance}" if instance else f"series {series}" if series else "instances"
        raise NotFoundError(f"no {what} in study {study}")
    return located


def _located(study: Study, series: Series, row: Instance, store: InstanceStore) -> Located:
    return Located(
        study.study_instance_uid,
        series.series_instance_uid,
        row.sop_instance_uid,
        row.sop_class_uid,
        row.transfer_syntax_uid,
        store.path(row.path),
    )


# --- instances --------------------------------------------------------------------------------------
def choose_instance_syntax(ranges: Sequence[MediaRange], stored: Sequence[str]) -> str:
    """The transfer syntax to send ``application/dicom`` parts in: ``*`` (as stored) or one UID."""
    for wanted in ranges:
        if not wanted.accepts(DICOM):
            continue
        syntax = wanted.transfer_syntax or default_syntax(DICOM)
        if syntax == ANY_SYNTAX or all(s == syntax for s in stored):
            return syntax
        if syntax == str(ExplicitVRLittleEndian):  # decoded where stored compressed (transcode)
            return syntax
    raise NotAcceptableError(
        "the instances are stored as " + ", ".join(sorted(set(stored))) + "; accept one of them, "
        f"transfer-syntax=* or {ExplicitVRLittleEndian} (type=application/dicom)"
    )


def instance_bytes(item: Located, syntax: str) -> bytes:
    """The Part 10 file of ``item`` in ``syntax`` (``*``: as stored)."""
    if syntax in (ANY_SYNTAX, item.transfer_syntax_uid):
        return item.path.read_bytes()
    return transcode(item.path, syntax)


def transcode(path: Path, syntax: str) -> bytes:
    """Decode a stored file's pixel data and write it in an uncompressed ``syntax`` (pydicom)."""
    ds = dcmread(path)
    if "PixelData" in ds and UID(ds.file_meta.TransferSyntaxUID).is_compressed:
        try:
            ds.decompress()  # Explicit VR Little Endian, the only syntax choose_instance_syntax picks
        except Exception as error:  # pydicom raises several types for a codec it lacks
            raise NotAcceptableError(f"cannot decode {ds.file_meta.TransferSyntaxUID}: {error}") from error
    elif UID(ds.file_meta.TransferSyntaxUID) != syntax:
        ds.file_meta.TransferSyntaxUID = UID(syntax)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


# --- metadata ---------------------------------------------------------------------------------------
def metadata(item: Located, base_url: str) -> dict[str, Any]:
    """The DICOM JSON of ``item``: its data set without bulk data, which is given by BulkDataURI."""
    ds = dcmread(item.path, stop_before_pixels=False, defer_size=INLINE_LIMIT)
    url = base_url + item.url_path
    bulk: dict[str, str] = {}
    for tag in list(ds.keys()):
        vr, length = _vr_and_length(ds, tag)
        if tag in PIXEL_TAGS or (vr in BINARY_VRS and length > INLINE_LIMIT):
            bulk[f"{tag:08X}"] = vr
    for key in bulk:
        del ds[Tag(int(key, 16))]
    document: dict[str, Any] = ds.to_json_dict(bulk_data_threshold=2**31)
    for key, vr in bulk.items():
        document[key] = {"vr": vr, "BulkDataURI": f"{url}/bulkdata/{key}"}
    # Meta elements are not part of the data set, except the transfer syntax OHIF reads to decode.
    document["00020010"] = {"vr": "UI", "Value": [item.transfer_syntax_uid]}
    return document


def _vr_and_length(ds: Dataset, tag: BaseTag) -> tuple[str, int]:
    """An element's VR and length without reading a deferred value (``get_item`` keeps it raw)."""
    raw = ds.get_item(tag)
    vr = raw.VR
    if vr is None or " or " in str(vr):  # implicit VR: the dictionary's, Pixel Data by its bits
        vr = "OW" if int(ds.get("BitsAllocated", 8) or 8) > 8 else "OB"
        if tag not in PIXEL_TAGS:
            vr = _dictionary_vr(tag)
    length = getattr(raw, "length", None)
    if length is None:
        value = getattr(raw, "value", None)
        length = len(value) if isinstance(value, bytes) else 0
    return str(vr), int(length)


def _dictionary_vr(tag: BaseTag) -> str:
    try:
        return str(dictionary_VR(tag)).split(" ")[0]
    except KeyError:
        return "UN"


# --- frames and bulk data ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Frames:
    """Frames ready to send: each as bytes, with the media type and syntax of every part."""

    media_type: str
    transfer_syntax: str
    data: list[bytes]


def parse_frame_list(text: str) -> list[int]:
    """``1,3,5`` → [1, 3, 5] (1-based); ``ValueError`` for anything else."""
    try:
        numbers = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"frame list {text!r} is not comma-separated numbers") from None
    if not numbers or any(n < 1 for n in numbers):
        raise ValueError(f"frame numbers start at 1, got {text!r}")
    return numbers


def frames(item: Located, numbers: Sequence[int], ranges: Sequence[MediaRange]) -> Frames:
    """Frames ``numbers`` of ``item``: as stored if the client accepts it, else decoded if it may."""
    ds = dcmread(item.path)
    if "PixelData" not in ds:
        raise NotFoundError(f"instance {item.sop_instance_uid} has no pixel data")
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if any(n > count for n in numbers):
        raise NotFoundError(f"instance {item.sop_instance_uid} has {count} frame(s)")
    stored = str(ds.file_meta.TransferSyntaxUID)
    compressed = not is_uncompressed(stored)
    stored_type = FRAME_MEDIA_TYPES.get(stored, OCTET_STREAM) if compressed else OCTET_STREAM
    for wanted in ranges:
        syntax = wanted.transfer_syntax
        if wanted.accepts(stored_type) and (syntax in (None, ANY_SYNTAX, stored) or not compressed):
            if compressed:
                return Frames(stored_type, stored, list(_encapsulated(ds, count, numbers)))
            return Frames(OCTET_STREAM, str(ExplicitVRLittleEndian), [_native(ds, count, n) for n in numbers])
        if compressed and wanted.accepts(OCTET_STREAM) and syntax in (None, ANY_SYNTAX, *_LE):
            return Frames(
                OCTET_STREAM, str(ExplicitVRLittleEndian), [_decoded(item.path, n) for n in numbers]
            )
    raise NotAcceptableError(
        f"frames are stored as {stored_type} (transfer syntax {stored}); accept it, "
        f"or {OCTET_STREAM} for decoded frames"
    )


_LE = (str(ExplicitVRLittleEndian),)


def _encapsulated(ds: Dataset, count: int, numbers: Sequence[int]) -> Iterator[bytes]:
    every = list(generate_frames(ds.PixelData, number_of_frames=count))
    for n in numbers:
        yield every[n - 1]


def _frame_bits(ds: Dataset) -> int:
    return int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * int(ds.BitsAllocated)


def _native(ds: Dataset, count: int, number: int) -> bytes:
    """One frame of uncompressed pixel data; frames of 1-bit data need not start on a byte."""
    bits = _frame_bits(ds)
    data: bytes = ds.PixelData
    if bits % 8 == 0:
        size = bits // 8
        return data[(number - 1) * size : number * size]
    unpacked = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    frame = unpacked[(number - 1) * bits : number * bits]
    return np.packbits(frame, bitorder="little").tobytes()


def _decoded(path: Path, number: int) -> bytes:
    try:
        array = pixel_array(path, index=number - 1, raw=True)
    except Exception as error:  # a codec pydicom lacks
        raise NotAcceptableError(f"cannot decode frame {number}: {error}") from error
    return bytes(np.ascontiguousarray(array).tobytes())


def bulkdata(item: Located, tag_text: str, ranges: Sequence[MediaRange]) -> Frames:
    """A top-level binary value; Pixel Data of a compressed instance as its frames."""
    try:
        tag = Tag(int(tag_text, 16))
    except ValueError:
        raise NotFoundError(f"{tag_text!r} is not a tag (8 hex digits)") from None
    ds = dcmread(item.path)
    if tag not in ds:
        raise NotFoundError(f"instance {item.sop_instance_uid} has no element {tag_text}")
    if tag == Tag(0x7FE00010) and not is_uncompressed(str(ds.file_meta.TransferSyntaxUID)):
        count = int(ds.get("NumberOfFrames", 1) or 1)
        return frames(item, list(range(1, count + 1)), ranges)
    value = ds[tag].value
    if not isinstance(value, bytes):
        raise NotFoundError(f"element {tag_text} is not bulk data")
    return Frames(OCTET_STREAM, str(ExplicitVRLittleEndian), [value])
