"""Media types and transfer syntaxes of WADO-RS (PS3.18 §8.7.3): what a client accepts, what is sent.

``Accept`` lists media ranges (``multipart/related; type="application/dicom"; transfer-syntax=*``,
comma-separated, each with an optional ``q``). ``choose`` picks the first the node can serve, best ``q``
first; a client that names no transfer syntax gets the PS3.18 default for the media type.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from dicom_node.web.multipart import media_type_parameters

ANY_SYNTAX = "*"
DICOM = "application/dicom"
OCTET_STREAM = "application/octet-stream"
DICOM_JSON = "application/dicom+json"
MULTIPART = "multipart/related"
UNCOMPRESSED = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian), str(ExplicitVRBigEndian))
NATIVE_SYNTAXES = (*UNCOMPRESSED, str(DeflatedExplicitVRLittleEndian))

# PS3.18 Table 8.7.3-2: the media type of a compressed frame, by its transfer syntax.
FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
# Names clients also send for the same media types (older editions of PS3.18, x- prefixes).
ALIASES = {"image/jp2k": "image/jp2", "image/x-jls": "image/jls", "image/x-dicom-rle": "image/dicom-rle"}


@dataclass(frozen=True)
class MediaRange:
    """One entry of an Accept header: ``multipart/related; type=…`` read as its part's type."""

    media_type: str
    """The type of each part (``application/dicom``), or the whole body's for a single part."""
    transfer_syntax: str | None
    multipart: bool
    quality: float

    def accepts(self, media_type: str) -> bool:
        wanted = ALIASES.get(self.media_type, self.media_type)
        if wanted in ("*/*", "*"):
            return True
        if wanted.endswith("/*"):
            return media_type.startswith(wanted[:-1])
        return wanted == media_type


def accepted(header: str | None, default: str) -> list[MediaRange]:
    """The media ranges of an Accept header, best first; none given: ``default`` (a part type)."""
    ranges: list[MediaRange] = []
    for index, item in enumerate((header or "").split(",")):
        if not item.strip():
            continue
        kind, parameters = media_type_parameters(item)
        try:
            quality = float(parameters.get("q", "1"))
        except ValueError:
            quality = 1.0
        multipart = kind == MULTIPART
        part = parameters.get("type", default if multipart else kind).lower() if multipart else kind
        ranges.append(MediaRange(part, parameters.get("transfer-syntax"), multipart, quality - index * 1e-6))
    if not ranges:
        ranges.append(MediaRange(default, None, True, 1.0))
    return sorted(ranges, key=lambda r: -r.quality)


def default_syntax(media_type: str) -> str:
    """PS3.18 §8.7.3.5.2: what a range without a transfer-syntax parameter means."""
    if media_type in (DICOM, OCTET_STREAM):
        return str(ExplicitVRLittleEndian)
    for syntax, kind in FRAME_MEDIA_TYPES.items():
        if kind == ALIASES.get(media_type, media_type):
            return syntax
    return ANY_SYNTAX


def is_uncompressed(syntax: str) -> bool:
    return syntax in NATIVE_SYNTAXES or not UID(syntax).is_compressed
