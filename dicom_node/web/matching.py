"""C-FIND attribute matching (PS3.4 §C.2.2.2) over data sets, as QIDO-RS asks it (PS3.18 §8.3.4).

Single value matching (exact; Person Name case-insensitively), wildcards ``*`` and ``?``, lists of UIDs
(``,`` in a QIDO query, ``\\`` in C-FIND) and of other values (``ModalitiesInStudy=CT\\MR``), ranges
of dates and times (``a-b``, ``a-``, ``-b``) and universal matching (an empty value). An element with
several values matches if one of them does.

This module is the small interface QIDO-RS needs (a key and a value → does this data set match); the
query engine of the DICOM C-FIND SCP takes its place when it lands (see docs/dicomweb.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag

RANGE_VRS = ("DA", "TM", "DT")
UID_VR = "UI"


class QueryKeyError(ValueError):
    """A query parameter that names no DICOM attribute, or a value it cannot hold."""


@dataclass(frozen=True)
class Key:
    """One matching key: the attribute and the value asked for."""

    tag: BaseTag
    keyword: str
    vr: str
    value: str

    def matches(self, ds: Dataset) -> bool:
        if not self.value or self.value == "*":
            return True
        element = ds.get(self.tag)
        if element is None or element.value in (None, "", []):
            return False  # PS3.4 C.2.2.2.1: an absent or empty attribute matches only universally
        values = element.value if element.VM > 1 else [element.value]
        return any(self._one(str(v)) for v in values)

    def _one(self, actual: str) -> bool:
        if self.vr != UID_VR and "\\" in self.value:  # a list of values (C-FIND's backslashes)
            return any(Key(self.tag, self.keyword, self.vr, v)._one(actual) for v in self.value.split("\\"))
        wanted = self.value
        if self.vr == UID_VR:
            return actual in re.split(r"[,\\]", wanted)
        if self.vr in RANGE_VRS and "-" in wanted:
            low, _, high = wanted.partition("-")
            compared = _plain(actual)
            return (not low or compared >= _plain(low)) and (
                not high or compared[: len(_plain(high))] <= _plain(high)
            )
        if self.vr in RANGE_VRS:
            return (
                _plain(actual).startswith(_plain(wanted))
                if self.vr == "TM"
                else _plain(actual) == _plain(wanted)
            )
        flags = re.IGNORECASE if self.vr == "PN" else 0
        if "*" in wanted or "?" in wanted:
            pattern = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in wanted)
            return re.fullmatch(pattern, actual.strip(), flags | re.DOTALL) is not None
        if flags:
            return actual.strip().lower() == wanted.strip().lower()
        return actual.strip() == wanted.strip()


def _plain(value: str) -> str:
    """A date or time without the separators older encodings carry (``2024.01.02``, ``10:20``)."""
    return value.replace(".", "").replace(":", "").strip()


def attribute(name: str) -> tuple[BaseTag, str, str]:
    """A keyword (``PatientName``) or tag (``00100010``) → (tag, keyword, VR), else ``QueryKeyError``."""
    tag: BaseTag | None = None
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        tag = Tag(int(name, 16))
    else:
        number = tag_for_keyword(name)
        tag = Tag(number) if number is not None else None
    if tag is None:
        raise QueryKeyError(f"{name!r} is not a DICOM attribute keyword or tag")
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        raise QueryKeyError(f"{name!r} is not an attribute of the DICOM dictionary") from None
    return tag, keyword_for_tag(tag) or name, vr


def key(name: str, value: str) -> Key:
    tag, keyword, vr = attribute(name)
    if vr == "SQ":
        raise QueryKeyError(f"{keyword}: sequence matching is not supported")
    return Key(tag, keyword, vr, value)
