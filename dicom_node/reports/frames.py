"""Results on a multi-frame source image: which frame each plane is, and references that name it.

A pipeline gives one ``ImageReference`` per plane of its volume; for an Enhanced or Legacy Converted
Enhanced CT all of them name the same instance, each with its ``frame_number``. The writers then
reference the image once, with the frames (Referenced Frame Number), never the same instance once per
plane:

* SEG: highdicom's ``Segmentation`` takes the multi-frame image itself as its only source image and a
  pixel array in that image's frame order, and writes each frame's Plane Position and its Derivation
  Image reference to the source frame (``on_source_frames`` puts the planes in frame order).
* SR: an image region (SCOORD) or a group's source image names the frame it lies on
  (``region_source``, ``group_sources``), and a region's pixel geometry is that frame's
  (``plane_geometry``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset

from pipelines.findings import ImageReference

from .sources import SliceGeometry

_Scalar = TypeVar("_Scalar", bound=np.generic)
_FUNCTIONAL_GROUPS = ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence")

__all__ = ["group_sources", "on_source_frames", "plane_geometry", "region_source", "unique_instances"]


def _frame_macro(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """One frame's functional group macro (``frame`` from 1): per-frame item first, then the shared one."""
    for keyword, index in zip(_FUNCTIONAL_GROUPS, (frame - 1, 0), strict=True):
        groups = ds.get(keyword)
        if groups is None or len(groups) <= index:
            continue
        items = groups[index].get(sequence)
        if items:
            item: Dataset = items[0]
            return item
    return None


def plane_geometry(ds: Dataset, frame_number: int | None) -> SliceGeometry:
    """Where one image, or one frame of a multi-frame image, lies in patient coordinates."""
    if frame_number is None:
        return SliceGeometry(ds)
    plane = Dataset()
    for sequence, keyword in (
        ("PlaneOrientationSequence", "ImageOrientationPatient"),
        ("PlanePositionSequence", "ImagePositionPatient"),
        ("PixelMeasuresSequence", "PixelSpacing"),
    ):
        item = _frame_macro(ds, frame_number, sequence)
        if item is None or keyword not in item:
            raise ValueError(f"Frame {frame_number} of SOP Instance {ds.SOPInstanceUID} has no {keyword}.")
        plane[keyword] = item[keyword]
    return SliceGeometry(plane)


def on_source_frames(
    references: Sequence[ImageReference], planes: Sequence[pydicom.Dataset], array: npt.NDArray[_Scalar]
) -> tuple[list[pydicom.Dataset], npt.NDArray[_Scalar]]:
    """The SEG's source images and its pixel array: unchanged for single-frame sources; for the frames of
    one multi-frame image, that image alone and the planes of ``array`` moved to its frame order (frames no
    plane covers stay empty, and a SEG leaves empty frames out)."""
    if all(ref.frame_number is None for ref in references):
        return list(planes), array
    instances = {ref.sop_instance_uid for ref in references}
    if len(instances) != 1 or any(ref.frame_number is None for ref in references):
        raise ValueError(
            "A segmentation's planes must all be frames of one multi-frame image or all single-frame "
            f"images; got frames of {len(instances)} instances."
        )
    image = planes[0]
    frames = int(image.get("NumberOfFrames", 1) or 1)
    ordered = np.zeros((frames, *array.shape[1:]), dtype=array.dtype)
    for plane, ref in enumerate(references):
        assert ref.frame_number is not None
        if not 1 <= ref.frame_number <= frames:
            raise ValueError(f"Frame {ref.frame_number} is not among the {frames} frames of its image.")
        ordered[ref.frame_number - 1] = array[plane]
    return [image], ordered


def region_source(image: pydicom.Dataset, frame_number: int | None) -> hd.sr.SourceImageForRegion:
    """The source of an image region: the image, and the frame it lies on for a multi-frame image."""
    return hd.sr.SourceImageForRegion(
        referenced_sop_class_uid=str(image.SOPClassUID),
        referenced_sop_instance_uid=str(image.SOPInstanceUID),
        referenced_frame_numbers=None if frame_number is None else [frame_number],
    )


def group_sources(
    references: Sequence[ImageReference], images: Sequence[pydicom.Dataset]
) -> list[hd.sr.SourceImageForMeasurementGroup]:
    """A measurement group's source images: each instance once, with its frames if it has any."""
    frames: dict[str, list[int]] = {}
    by_uid: dict[str, pydicom.Dataset] = {}
    for ref, image in zip(references, images, strict=True):
        by_uid.setdefault(ref.sop_instance_uid, image)
        listed = frames.setdefault(ref.sop_instance_uid, [])
        if ref.frame_number is not None and ref.frame_number not in listed:
            listed.append(ref.frame_number)
    return [
        hd.sr.SourceImageForMeasurementGroup(
            referenced_sop_class_uid=str(image.SOPClassUID),
            referenced_sop_instance_uid=uid,
            referenced_frame_numbers=sorted(frames[uid]) or None,
        )
        for uid, image in by_uid.items()
    ]


def unique_instances(images: Sequence[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """``images`` with each SOP Instance once (an SR's evidence lists an instance once, not per frame)."""
    seen: dict[str, pydicom.Dataset] = {}
    for image in images:
        seen.setdefault(str(image.SOPInstanceUID), image)
    return list(seen.values())
