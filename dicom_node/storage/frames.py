"""The planes of a multi-frame image (Enhanced CT, Legacy Converted Enhanced CT, …) as the index reads them.

A multi-frame image keeps its geometry in functional groups, not at the top level: Plane Orientation,
Pixel Measures (Pixel Spacing, Slice Thickness, Spacing Between Slices) and Plane Position, each in the
frame's item of the Per-frame Functional Groups Sequence (5200,9230) or, when the same for every frame,
once in the Shared Functional Groups Sequence (5200,9229) (PS3.3 C.7.6.16). ``frame_planes`` gives each
frame as a small data set holding those attributes at its top level, so that the single-frame readers of
``attributes.py`` (orientation, slice position, thickness) apply unchanged.

Both sequences lie after group 0040, past what the edge parses of a single-frame image, so the edge
parses a multi-frame image again up to ``LAST_FRAME_TAG`` (``incoming.read_received``).
"""

from __future__ import annotations

from pydicom.dataset import Dataset

__all__ = ["LAST_FRAME_TAG", "frame_planes", "is_multiframe", "number_of_frames"]

#: The last tag a multi-frame image is parsed up to: the functional groups (5200,9229) and (5200,9230).
LAST_FRAME_TAG = 0x5200FFFF

_FUNCTIONAL_GROUPS = ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence")
# (macro sequence, attributes copied from its item)
_PLANE_MACROS = (
    ("PlaneOrientationSequence", ("ImageOrientationPatient",)),
    ("PlanePositionSequence", ("ImagePositionPatient",)),
    ("PixelMeasuresSequence", ("PixelSpacing", "SliceThickness", "SpacingBetweenSlices")),
)


def number_of_frames(ds: Dataset) -> int | None:
    """Number of Frames (0028,0008) when it is a positive integer, else ``None``."""
    try:
        value = int(str(ds.get("NumberOfFrames", "") or "").strip() or 0)
    except ValueError:
        return None
    return value if value > 0 else None


def is_multiframe(ds: Dataset) -> bool:
    """Whether ``ds`` is an image whose geometry lies in functional groups (or may, once parsed further)."""
    return number_of_frames(ds) is not None or any(keyword in ds for keyword in _FUNCTIONAL_GROUPS)


def _macro(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """One frame's functional group macro: its per-frame item first, then the shared one."""
    for keyword, index in zip(_FUNCTIONAL_GROUPS, (frame, 0), strict=True):
        groups = ds.get(keyword)
        if groups is None or len(groups) <= index:
            continue
        items = groups[index].get(sequence)
        if items:
            item: Dataset = items[0]
            return item
    return None


def frame_planes(ds: Dataset) -> list[Dataset]:
    """Each frame's orientation, position and pixel measures as a top-level data set, in frame order.

    Frames whose functional groups lack an attribute lack it here too (the readers then see ``None``);
    an image with neither functional groups sequence gives no planes.
    """
    if not any(keyword in ds for keyword in _FUNCTIONAL_GROUPS):
        return []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    frames = number_of_frames(ds) or (len(per_frame) if per_frame else 1)
    planes = []
    for frame in range(frames):
        plane = Dataset()
        for sequence, keywords in _PLANE_MACROS:
            item = _macro(ds, frame, sequence)
            if item is None:
                continue
            for keyword in keywords:
                if keyword in item:
                    plane[keyword] = item[keyword]
        planes.append(plane)
    return planes
