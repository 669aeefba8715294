"""A human-readable companion: a Secondary Capture image with the findings drawn and written on it.

For PACS viewers that do not render SR (switched on per destination with ``ReportProfile.companion``).
A secondary capture was chosen over an encapsulated PDF because every viewer displays images, while
PDF display is an optional plug-in in many (OHIF among them). The image is marked as derived, with
burned-in annotation, and says plainly that it is an algorithm's result, not a diagnosis — and, for
untrained weights, first of all that it is not for clinical use.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from PIL import Image, ImageDraw, ImageFont

from pipelines.findings import ClassificationResult, Findings, NoduleDetectionResult

from .air import add_algorithm_equipment
from .naming import UNTRAINED_NOTICE, default_pipeline, series_description
from .sources import SliceGeometry, SourceIndex, copy_study_attributes
from .uids import ResultBasis, ResultKind, result_identity, settle

MAX_SIDE = 1024
DISCLAIMER = "Algorithm output - not a diagnosis. Full results in the DICOM SR."


def _grey(ds: pydicom.Dataset) -> npt.NDArray[np.uint8]:
    """The image as 8-bit grey: CT in a soft-tissue window, other images min-max scaled."""
    pixels = ds.pixel_array.astype(np.float64)
    if pixels.ndim == 3:  # colour: take luminance
        pixels = pixels @ np.array([0.299, 0.587, 0.114])
    if ds.get("Modality") == "CT":
        hu = pixels * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
        low, high = 40.0 - 200.0, 40.0 + 200.0  # soft-tissue window: level 40 HU, width 400 HU
        scaled = (np.clip(hu, low, high) - low) / (high - low)
    else:
        low, high = float(pixels.min()), float(pixels.max())
        scaled = (pixels - low) / (high - low or 1.0)
        if ds.get("PhotometricInterpretation") == "MONOCHROME1":
            scaled = 1.0 - scaled
    return (scaled * 255).astype(np.uint8)


def _lines_and_boxes(
    result: Findings, index: SourceIndex
) -> tuple[pydicom.Dataset, list[str], list[tuple[float, float, float, float]]]:
    """The image to draw on, the text lines and the boxes (column/row pixel corners) to draw."""
    if isinstance(result, ClassificationResult):
        image = index.get(result.source)
        lines = [
            f"{f.label}: {result.score_kind.value} score {f.score:.2f} "
            f"({'POSITIVE' if f.positive else 'negative'} at {f.threshold:.2f})"
            for f in sorted(result.findings, key=lambda f: -f.score)
        ]
        return image, lines, []
    if isinstance(result, NoduleDetectionResult):
        if not result.nodules:
            image = index.get(result.source_images[len(result.source_images) // 2])
            return image, ["No nodule detected."], []
        first = max(result.nodules, key=lambda n: n.confidence)
        image = index.get(first.source_slice)
        geometry = SliceGeometry(image)
        boxes, lines = [], []
        for number, nodule in enumerate(result.nodules, start=1):
            lines.append(
                f"Nodule {number}: {nodule.long_axis_mm:.1f} mm, {nodule.volume_mm3:.0f} mm3, "
                f"confidence {nodule.confidence:.2f}"
            )
            if nodule.source_slice.sop_instance_uid == first.source_slice.sop_instance_uid:
                w, h = geometry.extent_in_pixels(np.subtract(nodule.box_max, nodule.box_min))
                cx, cy = nodule.center_pixel
                boxes.append((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
        return image, lines, boxes
    k = int(np.argmax((result.label_map > 0).sum(axis=(1, 2))))
    image = index.get(result.source_images[k])
    boxes, lines = [], []
    for label in result.labels:
        mean = "" if label.mean_attenuation_hu is None else f", mean {label.mean_attenuation_hu:.0f} HU"
        lines.append(f"{label.name}: {label.volume_mm3 / 1000:.1f} ml{mean}")
        rows, cols = np.nonzero(result.label_map[k] == label.value)
        if rows.size:
            boxes.append((float(cols.min()), float(rows.min()), float(cols.max()), float(rows.max())))
    return image, lines, boxes


def _patient_orientation(ds: pydicom.Dataset) -> tuple[str, str]:
    """Patient Orientation of the drawn image: the source's, from its Image Orientation, or PA chest."""
    given = ds.get("PatientOrientation")
    if given is not None and len(given) == 2 and all(given):
        return (str(given[0]), str(given[1]))
    if "ImageOrientationPatient" in ds:
        letters = (("L", "R"), ("P", "A"), ("H", "F"))

        def describe(vector: npt.NDArray[np.float64]) -> str:
            order = np.argsort(-np.abs(vector))
            parts = [letters[i][0 if vector[i] > 0 else 1] for i in order if abs(vector[i]) > 0.25]
            return "".join(parts[:3])

        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        return (describe(iop[:3]), describe(iop[3:]))
    # A frontal radiograph without orientation is displayed as PA: rows toward the patient's left,
    # columns toward the feet.
    return ("L", "F")


def write_companion(
    result: Findings,
    sources: Sequence[pydicom.Dataset],
    *,
    pipeline: str | None = None,
    basis: ResultBasis | None = None,
) -> hd.sc.SCImage:
    """The companion secondary capture of one result (``basis``: as for the SR and SEG)."""
    pipeline = pipeline or default_pipeline(result)
    index = SourceIndex(sources)
    basis = basis or ResultBasis.of_sources(sources)
    image, lines, boxes = _lines_and_boxes(result, index)
    grey = Image.fromarray(_grey(image)).convert("RGB")
    scale = min(1.0, MAX_SIDE / max(grey.size))
    if scale < 1.0:
        grey = grey.resize((round(grey.width * scale), round(grey.height * scale)))
    font_size = max(12, grey.width // 48)
    font = ImageFont.load_default(size=font_size)
    line_height = int(font_size * 1.3)
    header = [f"{result.model.name} {result.model.version}", *lines, DISCLAIMER]
    if result.model.untrained:
        header.insert(0, UNTRAINED_NOTICE.upper())
    canvas = Image.new("RGB", (grey.width, grey.height + line_height * (len(header) + 1)), "black")
    canvas.paste(grey, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for x0, y0, x1, y1 in boxes:
        draw.rectangle(
            [x0 * scale - 3, y0 * scale - 3, x1 * scale + 3, y1 * scale + 3], outline="yellow", width=2
        )
    for i, line in enumerate(header):
        draw.text((8, grey.height + line_height // 2 + i * line_height), line, fill="white", font=font)
    pixels = np.asarray(canvas, dtype=np.uint8)

    identity = result_identity(basis, pipeline, result.model, ResultKind.COMPANION)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=image,  # the image drawn on, whatever order the sources came in
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=identity.series_instance_uid,
        series_number=identity.series_number,
        sop_instance_uid=identity.sop_instance_uid,
        instance_number=identity.instance_number,
        manufacturer=result.model.manufacturer,
        patient_orientation=_patient_orientation(image),
        manufacturer_model_name=result.model.name[:64],
        software_versions=result.model.version[:64],
        series_description=series_description(pipeline, result.model, "summary image"),
    )
    sc.BurnedInAnnotation = "YES"
    if "Laterality" not in sc:
        sc.Laterality = ""  # Type 2C (paired body parts): present and empty, laterality is unknown here
    sc.ImageType = ["DERIVED", "SECONDARY"]
    add_algorithm_equipment(sc, result.model)
    copy_study_attributes(sc, image)
    settle(sc, basis)
    return sc
