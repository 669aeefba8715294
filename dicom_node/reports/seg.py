"""DICOM Segmentation (SEG) of a label map on the source CT grid.

One segment per label present in the map, coded with SNOMED CT where a code is known (vertebrae) and a
declared private code otherwise, with a recommended display colour. The frames are built by highdicom
from the source instances themselves, so each frame carries the Image Position of the slice it lies on
and a Derivation Image reference to that slice; frames that hold no foreground are left out (that is
what keeps a BINARY SEG small), and because every remaining frame names its own source slice and
position, viewers place it correctly — the alignment test in ``tests/reports`` checks exactly that.

A SEG of untrained weights says so in every segment's Segment Description ("NOT FOR CLINICAL USE:
untrained model weights"), in its Content Description and first in its Series Description.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.uid import RLELossless

from pipelines.findings import SegmentationResult, SegmentLabel

from . import codes as c
from .air import add_algorithm_equipment, add_image_laterality, add_query_keys
from .codes import ARTIFICIAL_INTELLIGENCE, private_scheme_declaration, segment_coding
from .frames import on_source_frames
from .naming import UNTRAINED_NOTICE, default_pipeline, marked, series_description
from .profile import DEFAULT_PROFILE, ReportProfile
from .sources import SourceIndex, copy_study_attributes
from .uids import ResultBasis, ResultKind, derive_uid, result_identity, settle

TRACKING_ID_PREFIX = "label "


def segment_tracking_id(label: SegmentLabel) -> str:
    """The Tracking ID of a label's segment; it keeps the label's value so a reader can restore the map."""
    return f"{TRACKING_ID_PREFIX}{label.value}: {label.name}"[:64]


def label_value_from_tracking_id(tracking_id: str) -> int:
    """Inverse of :func:`segment_tracking_id` for the value."""
    if not tracking_id.startswith(TRACKING_ID_PREFIX):
        raise ValueError(f"Not a tracking ID written by dicom-node: {tracking_id!r}.")
    return int(tracking_id[len(TRACKING_ID_PREFIX) :].split(":", 1)[0])


def present_labels(result: SegmentationResult) -> list[SegmentLabel]:
    """The described labels that have at least one voxel, in value order.

    A value in the map that no label describes is an error of the pipeline, not something to hide.
    """
    values = {int(v) for v in np.unique(result.label_map) if v != 0}
    described = {label.value: label for label in result.labels}
    undescribed = sorted(values - described.keys())
    if undescribed:
        raise ValueError(f"The label map holds values {undescribed} that no label describes.")
    return [described[v] for v in sorted(values)]


def seg_kind(profile: ReportProfile) -> ResultKind:
    if profile.seg_type == hd.seg.SegmentationTypeValues.LABELMAP:
        return ResultKind.SEG_LABELMAP
    return ResultKind.SEG


def write_segmentation(
    result: SegmentationResult,
    sources: Sequence[pydicom.Dataset],
    profile: ReportProfile = DEFAULT_PROFILE,
    *,
    pipeline: str | None = None,
    basis: ResultBasis | None = None,
) -> hd.seg.Segmentation:
    """The SEG of ``result`` on its source images; ``ValueError`` if there is nothing to encode.

    ``basis`` is what the identity derives from (default: the sources' UIDs, now).
    """
    pipeline = pipeline or default_pipeline(result)
    index = SourceIndex(sources)
    basis = basis or ResultBasis.of_sources(sources)
    planes = [index.get(ref) for ref in result.source_images]
    rows, columns = result.label_map.shape[1:]
    for ds in planes:
        if (int(ds.Rows), int(ds.Columns)) != (rows, columns):
            raise ValueError(
                f"Source instance {ds.SOPInstanceUID} is {ds.Rows}x{ds.Columns}, "
                f"the label map {rows}x{columns}."
            )
    labels = present_labels(result)
    if not labels:
        raise ValueError("The label map is empty: there is no segment to write.")

    # Renumber label values to segment numbers 1..n (SEG requires them contiguous from 1).
    lut = np.zeros(int(result.label_map.max()) + 1, dtype=np.uint16)
    for number, label in enumerate(labels, start=1):
        lut[label.value] = number
    segment_map: npt.NDArray[np.uint16] = lut[result.label_map]
    if len(labels) < 256:
        segment_map = segment_map.astype(np.uint8)

    algorithm = hd.AlgorithmIdentificationSequence(
        name=result.model.name,
        family=ARTIFICIAL_INTELLIGENCE,
        version=result.model.version,
        source=result.model.manufacturer,
    )
    identity = result_identity(basis, pipeline, result.model, seg_kind(profile))
    descriptions = []
    uses_private = False
    for number, label in enumerate(labels, start=1):
        coding = segment_coding(label.name, number - 1)
        uses_private = uses_private or coding.is_private
        # The query keys an image manager indexes segments by: the region, and the structure itself
        # (a nodule: its region, the lung; a vertebra: the spine and the vertebra itself; a private label
        # names no anatomy we know).
        vertebra = not coding.is_private and coding.anatomic_region is None
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=label.name[:64],
                segmented_property_category=coding.category,
                segmented_property_type=coding.property_type,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_uid=derive_uid(identity.series_instance_uid, "segment", str(label.value)),
                tracking_id=segment_tracking_id(label),
                display_color=coding.display_color,
                anatomic_regions=[c.SPINE]
                if vertebra
                else (None if coding.anatomic_region is None else [coding.anatomic_region]),
                primary_anatomic_structures=[coding.property_type] if vertebra else None,
            )
        )

    labelmap = profile.seg_type == hd.seg.SegmentationTypeValues.LABELMAP
    # A multi-frame source is one source image, the planes in its frame order (reports/frames.py).
    planes, segment_map = on_source_frames(result.source_images, planes, segment_map)
    seg = hd.seg.Segmentation(
        source_images=planes,
        pixel_array=segment_map,
        segmentation_type=profile.seg_type,
        segment_descriptions=descriptions,
        series_instance_uid=identity.series_instance_uid,
        series_number=identity.series_number,
        sop_instance_uid=identity.sop_instance_uid,
        instance_number=identity.instance_number,
        manufacturer=result.model.manufacturer,
        manufacturer_model_name=result.model.name[:64],
        software_versions=result.model.version[:64],
        device_serial_number=(result.model.weights_sha256 or "unknown")[:64],
        content_description=marked(result.model, f"{pipeline} {result.model.name} {result.model.version}"),
        content_label=pipeline.upper().replace("-", "_")[:16],
        series_description=series_description(pipeline, result.model, "SEG"),
        transfer_syntax_uid=RLELossless if labelmap else pydicom.uid.ExplicitVRLittleEndian,
        coding_schemes=[private_scheme_declaration()] if uses_private else None,
        omit_empty_frames=True,
    )
    if result.model.untrained:
        for description in seg.SegmentSequence:
            description.SegmentDescription = UNTRAINED_NOTICE
    add_algorithm_equipment(seg, result.model)
    add_query_keys(seg, c.RESULT_SERIES)
    add_image_laterality(seg, index.first)
    copy_study_attributes(seg, index.first)
    settle(seg, basis)
    return seg
