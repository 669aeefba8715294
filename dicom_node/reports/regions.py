"""The measurement group of a radiograph finding that has a place on the image (its CAM region).

A positive finding with a ``region`` (``pipelines.cam``) becomes a TID 1410 planar ROI group: its
Image Region a closed SCOORD POLYLINE outlining the area that drives the finding, on the radiograph;
its Tracking Identifier the finding and score ("Cardiomegaly 0.83"), which is the label a viewer
prints beside the outline; the finding as qualitative evaluation (Present) and the score and
threshold as NUMs, as in the image-level groups. Findings without a region keep their image-level
item in the document's Qualitative Evaluations (``groups.classification_content``).

Where OHIF 3.13 puts the label: beside the outline's right edge at the height of its middle
(``getTextBoxCoordsCanvas`` of cornerstone3D, called without an element by ``DICOMSRDisplayTool``);
``label_anchor`` computes that point so that tests can check that two labels are apart.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom

from pipelines.findings import ClassificationFinding, ClassificationResult, Polygon

from . import codes as c
from .uids import derive_uid


def region_label(finding: ClassificationFinding) -> str:
    """The finding and its score as a viewer prints it: ``"Cardiomegaly 0.83"`` (at most 64 characters)."""
    score = f" {finding.score:.2f}"
    return f"{finding.label[: 64 - len(score)]}{score}"


def label_anchor(region: Polygon) -> tuple[float, float]:
    """Where OHIF 3.13 anchors a group's label: the outline's largest column, the middle of its rows."""
    xs, ys = np.asarray(region, dtype=np.float64).T
    return float(xs.max()), float((ys.min() + ys.max()) / 2)


def region_group(
    result: ClassificationResult, finding: ClassificationFinding, image: pydicom.Dataset, sop_uid: str
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """The TID 1410 group of one positive finding with a region on ``image`` (the radiograph)."""
    if finding.region is None:
        raise ValueError(f'Finding "{finding.label}" has no region to outline.')
    xs, ys = np.asarray(finding.region, dtype=np.float64).T
    if xs.min() < 0 or ys.min() < 0 or xs.max() > int(image.Columns) or ys.max() > int(image.Rows):
        raise ValueError(
            f'The region of finding "{finding.label}" lies outside the {image.Rows}x{image.Columns} image.'
        )
    code = c.classification_code(finding.label)
    identifier = region_label(finding)
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            identifier=identifier, uid=derive_uid(sop_uid, "region", finding.label)
        ),
        referenced_region=hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=np.column_stack([xs, ys]),
            source_image=hd.sr.SourceImageForRegion.from_source_image(image),
        ),
        finding_type=code,
        # Name and version only, as every group (groups._algorithm: PixelMed's TID 4019 has no manufacturer).
        algorithm_id=hd.sr.AlgorithmIdentification(name=result.model.name, version=result.model.version),
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=code, value=c.PRESENT)],
        measurements=[
            hd.sr.Measurement(name=c.score_code(result.score_kind), value=finding.score, unit=c.NO_UNITS),
            hd.sr.Measurement(name=c.THRESHOLD_VALUE, value=finding.threshold, unit=c.NO_UNITS),
        ],
    )
