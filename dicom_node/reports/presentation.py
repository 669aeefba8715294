"""Grayscale Softcopy Presentation State: the SR's outlines and labels, for viewers that draw no SR graphics.

Switched on per destination (``[[destinations]] presentation_state = true``, ``ReportProfile.
presentation_state``). The presentation state is built from the SR the destination receives, never from
the findings directly, so that it shows exactly the SR's drawable content and follows any change of the
SR's layout: every measurement group's group-level 2D region (SCOORD, concept "Image Region") becomes
a graphic object on the image it was selected from, and the group's label (the finding, its qualitative
evaluations and its first measurement) a text object beside it. Regions nested under a NUM repeat the
group's region and 3D regions (SCOORD3D) have no place in a 2D presentation state; both are left out.
An SR without any 2D region gets no presentation state.

The outline and its label form one graphic group and carry the SR group's Tracking Identifier and UID,
so a reader can tell which SR group each drawing comes from. A result of untrained weights also shows
the untrained notice at the top of every referenced image. Labels never overlap: each is moved down
until it clears every label already placed on that image.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom

from pipelines.findings import Findings

from .naming import UNTRAINED_NOTICE, default_pipeline, series_description
from .sources import SourceIndex, copy_study_attributes
from .uids import ResultBasis, ResultKind, result_identity, settle

IMAGING_MEASUREMENTS = "126010"  # DCM "Imaging Measurements"
MEASUREMENT_GROUP = "125007"  # DCM "Measurement Group"
IMAGE_REGION = ("111030", "DCM")  # DCM "Image Region"
FINDING = "121071"  # DCM "Finding"
TRACKING_IDENTIFIER = "112039"  # DCM "Tracking Identifier"
TRACKING_UID = "112040"  # DCM "Tracking Unique Identifier"
NOT_LABELS = {FINDING, "363698007", "G-C0E3", "121050"}  # finding, finding site, method: not evaluations
CONTENT_LABEL = "AI_RESULTS"
LAYER = "AI RESULTS"
LAYER_COLOR = hd.color.CIELabColor(97.14, -21.56, 94.48)  # yellow, as the companion image draws
LINE_FRACTION = 1 / 40  # label height as a fraction of the image height
MIN_LINE = 10.0  # pixels
# What outlines a finding. A POINT is left out: the one group-level POINT we write is the summary group
# of an SR that found nothing (groups.summary_group), a place to hang a count on for OHIF, not a finding.
DRAWABLE = {"POLYLINE", "CIRCLE", "ELLIPSE"}


@dataclass
class Region:
    """One SR group's 2D region and label on one image."""

    sop_instance_uid: str
    graphic_type: str
    graphic_data: npt.NDArray[np.float64]
    label: str
    tracking_id: str | None
    tracking_uid: str | None


@dataclass
class _Placer:
    """Label boxes placed on one image so far; ``place`` returns a box clear of all of them."""

    rows: int
    columns: int
    placed: list[tuple[float, float, float, float]] = field(default_factory=list)

    @property
    def line(self) -> float:
        return max(MIN_LINE, self.rows * LINE_FRACTION)

    def place(self, text: str, x: float, y: float) -> tuple[float, float, float, float]:
        height = self.line
        width = min(float(self.columns), 0.6 * height * len(text))
        left = min(max(0.0, x), self.columns - width)
        top = y - height if y - height >= 0 else max(0.0, y)
        while any(_overlaps((left, top, left + width, top + height), box) for box in self.placed):
            top += height
        top = min(top, self.rows - height)
        box = (left, top, left + width, top + height)
        self.placed.append(box)
        return box


def _overlaps(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _code(item: pydicom.Dataset, keyword: str = "ConceptNameCodeSequence") -> tuple[str, str]:
    seq = item.get(keyword)
    if not seq:
        return ("", "")
    return (str(seq[0].get("CodeValue", "")), str(seq[0].get("CodeMeaning", "")))


def _children(item: pydicom.Dataset, code_value: str) -> Iterator[pydicom.Dataset]:
    for child in item.get("ContentSequence", []):
        if _code(child)[0] == code_value:
            yield child


def _number(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _label(group: pydicom.Dataset) -> str:
    """Finding, its evaluations and its first measurement, as the SR names them.

    E.g. ``"Atelectasis: Present, probability 0.71"``, ``"Nodule: long axis 12 mm"``.
    """
    finding = next((_code(i, "ConceptCodeSequence")[1] for i in _children(group, FINDING)), "")
    parts: list[str] = []
    for item in group.get("ContentSequence", []):
        name, meaning = _code(item)
        if item.ValueType == "CODE" and name not in NOT_LABELS:
            value = _code(item, "ConceptCodeSequence")[1]
            parts.append(value if meaning == finding else f"{meaning} {value}")
    num = next((i for i in group.get("ContentSequence", []) if i.ValueType == "NUM"), None)
    if num is not None and num.get("MeasuredValueSequence"):
        measured = num.MeasuredValueSequence[0]
        unit = str(measured.MeasurementUnitsCodeSequence[0].CodeValue)
        value = _number(float(measured.NumericValue))
        what = _code(num)[1].split(" (")[0].lower()  # "Calibrated score (operating ...)": the name only
        parts.append(f"{what} {value}" if unit == "1" else f"{what} {value} {unit}")
    text = finding or "Region"
    return f"{text}: {', '.join(parts)}" if parts else text


def sr_regions(sr: pydicom.Dataset) -> list[Region]:
    """Every measurement group's group-level 2D image region in ``sr``, with its label."""
    regions: list[Region] = []
    for container in _children(sr, IMAGING_MEASUREMENTS):
        for group in _children(container, MEASUREMENT_GROUP):
            tracking_id = next((str(i.TextValue) for i in _children(group, TRACKING_IDENTIFIER)), None)
            tracking_uid = next((str(i.UID) for i in _children(group, TRACKING_UID)), None)
            if tracking_id is None or tracking_uid is None:
                tracking_id = tracking_uid = None  # a graphic object carries both or neither
            label = _label(group)
            for item in group.get("ContentSequence", []):
                name = _code(item)
                if item.ValueType != "SCOORD" or name[0] != IMAGE_REGION[0]:
                    continue
                if str(item.GraphicType) not in DRAWABLE:
                    continue
                for selected in item.get("ContentSequence", []):
                    for ref in selected.get("ReferencedSOPSequence", []):
                        regions.append(
                            Region(
                                sop_instance_uid=str(ref.ReferencedSOPInstanceUID),
                                graphic_type=str(item.GraphicType),
                                graphic_data=np.asarray(item.GraphicData, dtype=np.float64).reshape(-1, 2),
                                label=label,
                                tracking_id=tracking_id,
                                tracking_uid=tracking_uid,
                            )
                        )
    return regions


def _voi(image: pydicom.Dataset) -> list[hd.pr.SoftcopyVOILUTTransformation] | None:
    """The referenced images' first window (CT: as the modality set it), else none (identity)."""
    if "WindowCenter" not in image or "WindowWidth" not in image:
        return None
    center, width = image.WindowCenter, image.WindowWidth
    center = float(center[0] if isinstance(center, pydicom.multival.MultiValue) else center)
    width = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
    return [hd.pr.SoftcopyVOILUTTransformation(window_center=center, window_width=width)]


def _annotation(
    image: pydicom.Dataset,
    regions: Sequence[Region],
    layer: hd.pr.GraphicLayer,
    notice: str | None,
    first_group_id: int,
) -> tuple[hd.pr.GraphicAnnotation, list[hd.pr.GraphicGroup]]:
    """One image's outlines and labels; their graphic groups are numbered from ``first_group_id``."""
    placer = _Placer(int(image.Rows), int(image.Columns))
    texts: list[hd.pr.TextObject] = []
    if notice is not None:
        box = placer.place(notice, 0.0, 0.0)
        texts.append(hd.pr.TextObject(notice, "PIXEL", bounding_box=box, text_justification="LEFT"))
    graphics: list[hd.pr.GraphicObject] = []
    groups: list[hd.pr.GraphicGroup] = []
    for number, region in enumerate(regions, start=first_group_id):
        group = hd.pr.GraphicGroup(number, region.label[:64])
        groups.append(group)
        graphics.append(
            hd.pr.GraphicObject(
                graphic_type=region.graphic_type,
                graphic_data=region.graphic_data,
                units="PIXEL",
                tracking_id=region.tracking_id,
                tracking_uid=region.tracking_uid,
                graphic_group=group,
            )
        )
        x0, y0 = region.graphic_data.min(axis=0)
        box = placer.place(region.label, float(x0), float(y0))
        texts.append(
            hd.pr.TextObject(
                region.label,
                "PIXEL",
                bounding_box=box,
                text_justification="LEFT",
                graphic_group=group,
            )
        )
    annotation = hd.pr.GraphicAnnotation(
        referenced_images=[image], graphic_layer=layer, graphic_objects=graphics, text_objects=texts
    )
    return annotation, groups


def write_presentation_state(
    sr: pydicom.Dataset,
    result: Findings,
    sources: Sequence[pydicom.Dataset],
    *,
    pipeline: str | None = None,
    basis: ResultBasis | None = None,
) -> hd.pr.GrayscaleSoftcopyPresentationState | None:
    """The GSPS with ``sr``'s 2D regions and labels on their images; None when it has no 2D region.

    Its identity derives like the other results' (``basis``), with the SR's SOP Instance UID as the
    variant: another SR layout gives another presentation state.
    """
    regions = sr_regions(sr)
    if not regions:
        return None
    pipeline = pipeline or default_pipeline(result)
    index = SourceIndex(sources)
    basis = basis or ResultBasis.of_sources(sources)
    by_image: dict[str, list[Region]] = defaultdict(list)
    for region in regions:
        by_image[region.sop_instance_uid].append(region)
    images = [index.get(uid) for uid in by_image]
    layer = hd.pr.GraphicLayer(LAYER, order=1, description="AI result outlines", display_color=LAYER_COLOR)
    notice = UNTRAINED_NOTICE.upper() if result.model.untrained else None
    annotations: list[hd.pr.GraphicAnnotation] = []
    groups: list[hd.pr.GraphicGroup] = []
    for image in images:
        annotation, image_groups = _annotation(
            image, by_image[str(image.SOPInstanceUID)], layer, notice, len(groups) + 1
        )
        annotations.append(annotation)
        groups += image_groups
    identity = result_identity(
        basis, pipeline, result.model, ResultKind.PRESENTATION_STATE, str(sr.SOPInstanceUID)
    )
    description = series_description(pipeline, result.model, "presentation state")
    pr = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=images,
        series_instance_uid=identity.series_instance_uid,
        series_number=identity.series_number,
        sop_instance_uid=identity.sop_instance_uid,
        instance_number=identity.instance_number,
        manufacturer=result.model.manufacturer,
        manufacturer_model_name=result.model.name[:64],
        software_versions=result.model.version[:64],
        device_serial_number="",
        content_label=CONTENT_LABEL,
        content_description=description[:64],
        graphic_annotations=annotations,
        graphic_layers=[layer],
        graphic_groups=groups,
        voi_lut_transformations=_voi(images[0]),
    )
    pr.SeriesDescription = description
    if "Laterality" not in pr:
        pr.Laterality = ""  # Type 2C (paired body parts): present and empty, laterality is unknown here
    copy_study_attributes(pr, index.first)
    settle(pr, basis)
    # A presentation state dates itself by its Presentation Creation Date/Time, not a Content Date/Time.
    pr.PresentationCreationDate, pr.PresentationCreationTime = pr.ContentDate, pr.ContentTime
    del pr.ContentDate, pr.ContentTime
    return pr
