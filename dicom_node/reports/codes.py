"""Coded concepts used in our SR and SEG objects, and the tables that map result labels to them.

Every code here is either from DICOM PS3.16 as shipped in pydicom's concept dictionary (``codes.SCT.*``,
``codes.DCM.*``, ``codes.LN.*``, ``codes.UCUM.*``), or a SNOMED CT concept written out where PS3.16 has
none, or — only where no standard concept exists — a concept of our private coding scheme
``99DCMNODE``, which every object that uses it declares in its CodingSchemeIdentificationSequence.
``docs/codes.md`` lists the same table for people.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import highdicom as hd
import pydicom
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.sr.codedict import codes

from pipelines.findings import ScoreKind

PRIVATE_SCHEME = "99DCMNODE"
PRIVATE_SCHEME_NAME = "dicom-node private codes"
PRIVATE_SCHEME_RESPONSIBLE = "dicom-node project"


def private_code(value: str, meaning: str) -> hd.sr.CodedConcept:
    """A concept of our private coding scheme (declare it with :func:`private_scheme_declaration`)."""
    return hd.sr.CodedConcept(value=value, scheme_designator=PRIVATE_SCHEME, meaning=meaning)


def private_scheme_declaration() -> CodingSchemeIdentificationItem:
    """The CodingSchemeIdentificationSequence item that declares ``99DCMNODE``."""
    return CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME,
        name=PRIVATE_SCHEME_NAME,
        responsible_organization=PRIVATE_SCHEME_RESPONSIBLE,
    )


def _sct(value: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=value, scheme_designator="SCT", meaning=meaning)


def _cc(code: object) -> hd.sr.CodedConcept:
    """A pydicom ``Code`` from the dictionary as a highdicom ``CodedConcept``."""
    return hd.sr.CodedConcept(
        value=code.value,  # type: ignore[attr-defined]
        scheme_designator=code.scheme_designator,  # type: ignore[attr-defined]
        meaning=code.meaning,  # type: ignore[attr-defined]
    )


# --- document, template and measurement concepts -------------------------------------------------------
PROBABILITY = _cc(codes.DCM.Probability)  # DCM 122157
# A classifier output rescaled so that its operating threshold sits at a fixed value (TorchXRayVision's
# op_norm: 0.5). PS3.16 has no concept for it, and it is not a probability, so it is not coded as one.
CALIBRATED_SCORE = private_code("CALSCORE", "Calibrated score")
THRESHOLD_VALUE = _cc(codes.DCM.ThresholdValue)  # DCM 122411
CERTAINTY_OF_FINDING = _cc(codes.DCM.CertaintyOfFinding)  # DCM 111012
LONG_AXIS = _cc(codes.SCT.LongAxis)  # SCT 103339001
SHORT_AXIS = _cc(codes.SCT.ShortAxis)  # SCT 103340004
DIAMETER = _cc(codes.SCT.Diameter)  # SCT 81827009: the mean diameter, with derivation Mean
MEAN = _cc(codes.SCT.Mean)  # SCT 373098007 (CID 3488 derivation)
# How a nodule was measured (TID 300 Measurement Method): PS3.16 has no concept for either.
NODULE_SEGMENTATION_METHOD = private_code("NODTHRSEG", "HU threshold segmentation in the detection box")
NODULE_BOX_METHOD = private_code("NODBOX", "Detection box size (segmentation failed)")
VOLUME = _cc(codes.SCT.Volume)  # SCT 118565006
MEAN_ATTENUATION = _cc(codes.DCM.MeanAttenuationCoefficient)  # DCM 112181
PRESENT = _cc(codes.SCT.Present)  # SCT 52101004
ABSENT = _cc(codes.SCT.Absent)  # SCT 272519000
FINDING = _cc(codes.DCM.Finding)  # DCM 121071
LUNG = _cc(codes.SCT.Lung)  # SCT 39607008
NODULE = _cc(codes.SCT.Nodule)  # SCT 27925004
VERTEBRA = _cc(codes.SCT.Vertebra)  # SCT 51282000
ANATOMICAL_STRUCTURE = _cc(codes.SCT.AnatomicalStructure)  # SCT 91723000 (CID 7150)
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = _cc(codes.SCT.MorphologicallyAbnormalStructure)
IMAGING_MEASUREMENT_REPORT = _cc(codes.DCM.ImagingMeasurementReport)
ARTIFICIAL_INTELLIGENCE = _cc(codes.cid7162.ArtificialIntelligence)  # DCM 123110 (CID 7162)
COMMENT = _cc(codes.DCM.Comment)  # DCM 121106: the untrained-weights notice (a TEXT item)
# TID 1500 row 12, the document-level container of qualitative evaluations (TEXT or CODE items).
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept(
    value="C0034375", scheme_designator="UMLS", meaning="Qualitative Evaluations"
)

MILLIMETER = _cc(codes.UCUM.Millimeter)
CUBIC_MILLIMETER = _cc(codes.UCUM.CubicMillimeter)
HOUNSFIELD_UNIT = _cc(codes.UCUM.HounsfieldUnit)
NO_UNITS = _cc(codes.UCUM.NoUnits)  # UCUM "1": probabilities and confidences in [0, 1]

# --- IHE AIR: procedures reported (CID 100 as PixelMed's validator has it, 2019), what they looked at ---
cc = _cc  # public, for the AIR module
PROCEDURE_CT = _cc(codes.LN.CTUnspecifiedBodyRegion)  # LN 25045-6 "CT unspecified body region"
PROCEDURE_IMAGING = _cc(codes.SCT.ImagingProcedure)  # SCT 363679005 "Imaging procedure"
TARGET_REGION = _cc(codes.DCM.TargetRegion)  # DCM 123014, a TID 1602 Image Library descriptor
# SCT 51185008 "Chest": CID 4031 as PixelMed has it (2019) knows this code, not its successor 816094009.
CHEST = hd.sr.CodedConcept(value="51185008", scheme_designator="SCT", meaning="Chest")
SPINE = _cc(codes.SCT.Spine)  # SCT 421060004 (CID 4031)
# Series Description Code Sequence of every result series: what made it (CID 7162 Algorithm Family).
RESULT_SERIES = _cc(codes.cid7162.ArtificialIntelligence)  # DCM 123110
# TID 1600/1601/1602: the Image Library and the descriptors of its entries.
IMAGE_LIBRARY = _cc(codes.DCM.ImageLibrary)  # DCM 111028
IMAGE_LIBRARY_GROUP = _cc(codes.DCM.ImageLibraryGroup)  # DCM 126200
SOURCE = _cc(codes.SCT.Source)  # SCT 260753009
MODALITY = _cc(codes.DCM.Modality)  # DCM 121139
PIXEL_DATA_ROWS = _cc(codes.DCM.PixelDataRows)  # DCM 110910
PIXEL_DATA_COLUMNS = _cc(codes.DCM.PixelDataColumns)  # DCM 110911
PIXELS = hd.sr.CodedConcept(value="{pixels}", scheme_designator="UCUM", meaning="Pixels")
IMAGE_REGION = _cc(codes.DCM.ImageRegion)  # DCM 111030
# The summary group of an SR that has nothing to outline (PS3.16 has no such concepts): its NUM's name
# says the result, its value counts what was looked at, never 0 (OHIF prints a 0 as nothing).
NO_NODULE_DETECTED = private_code("NONODULE", "No nodule detected; images analysed")
NOTHING_SEGMENTED = private_code("NOSEGMNT", "Nothing segmented; images analysed")
NO_FINDING_ABOVE_THRESHOLD = private_code("NOPOSFND", "No finding above threshold; findings evaluated")
FINDINGS_ABOVE_THRESHOLD = private_code("POSCOUNT", "Findings above threshold")
IMAGES_UNIT = hd.sr.CodedConcept(value="{images}", scheme_designator="UCUM", meaning="images")
FINDINGS_UNIT = hd.sr.CodedConcept(value="{findings}", scheme_designator="UCUM", meaning="findings")


def modality_code(ds: pydicom.Dataset) -> hd.sr.CodedConcept:
    """The CID 29 code of an image's Modality (highdicom's Image Library guesses it from the SOP Class)."""
    for keyword in dir(codes.cid29):
        code = getattr(codes.cid29, keyword)
        if code.value == ds.get("Modality") and code.scheme_designator == "DCM":
            return _cc(code)
    raise ValueError(f"Modality {ds.get('Modality')!r} is not in CID 29.")


# --- image-level findings of the chest radiograph classifier (TorchXRayVision "all" labels) ------------
CLASSIFICATION_FINDINGS: dict[str, hd.sr.CodedConcept] = {
    "Atelectasis": _sct("46621007", "Atelectasis"),
    "Consolidation": _sct("95436008", "Lung consolidation"),
    "Infiltration": _cc(codes.DCM.Infiltrate),  # DCM 112121
    "Pneumothorax": _cc(codes.SCT.Pneumothorax),  # SCT 36118008
    "Edema": _cc(codes.SCT.PulmonaryEdema),  # SCT 19242006
    "Emphysema": _sct("87433001", "Pulmonary emphysema"),
    "Fibrosis": _cc(codes.SCT.Fibrosis),  # SCT 112674009
    "Effusion": _cc(codes.SCT.PleuralEffusion),  # SCT 60046008
    "Pneumonia": _sct("233604007", "Pneumonia"),
    "Pleural_Thickening": private_code("PLTHICK", "Pleural thickening"),
    "Cardiomegaly": _cc(codes.SCT.Cardiomegaly),  # SCT 287272002 as in PS3.16
    "Nodule": _cc(codes.SCT.Nodule),  # SCT 27925004
    "Mass": _cc(codes.SCT.Mass),  # SCT 4147007
    "Hernia": private_code("HERNIA", "Hernia"),
    "Lung Lesion": private_code("LUNGLES", "Lung lesion"),
    "Fracture": _sct("125605004", "Fracture of bone"),
    "Lung Opacity": private_code("LUNGOPAC", "Lung opacity"),
    "Enlarged Cardiomediastinum": private_code("ENLCMED", "Enlarged cardiomediastinum"),
}

# --- vertebrae (SEG segmented property types, SR finding sites) ----------------------------------------
VERTEBRAE: dict[str, hd.sr.CodedConcept] = {
    **{f"C{i}": _cc(getattr(codes.SCT, f"C{i}Vertebra")) for i in range(1, 8)},
    **{f"T{i}": _cc(getattr(codes.SCT, f"T{i}Vertebra")) for i in range(1, 13)},
    **{f"L{i}": _cc(getattr(codes.SCT, f"L{i}Vertebra")) for i in range(1, 6)},
    "S": _cc(codes.SCT.Sacrum),
    "Co": _cc(codes.SCT.Coccyx),
}

_VERTEBRA_NAME = re.compile(
    r"^(?:vertebrae?[ _-]?)?(C[1-7]|T1[0-2]|T[1-9]|L[1-5]|S|S1|Co)(?:[ _-]?vertebra)?$", re.I
)


def vertebra_level(name: str) -> str | None:
    """``"T12"`` for ``"vertebrae_T12"``, ``"T12"``, ``"T12 vertebra"``; ``None`` if not a vertebra."""
    lowered = name.strip().lower()
    if lowered in ("sacrum", "os sacrum"):
        return "S"
    if lowered == "coccyx":
        return "Co"
    match = _VERTEBRA_NAME.match(name.strip())
    if match is None:
        return None
    level = match.group(1).upper()
    if level in ("S", "S1"):
        return "S"
    if level == "CO":
        return "Co"
    return level


@dataclass(frozen=True)
class SegmentCoding:
    """How one label of a label map is described in a SEG: category, type and display colour."""

    category: hd.sr.CodedConcept
    property_type: hd.sr.CodedConcept
    display_color: hd.color.CIELabColor
    is_private: bool
    anatomic_region: hd.sr.CodedConcept | None = None


def _rgb_for(index: int) -> tuple[int, int, int]:
    """A distinct, reproducible colour (golden-angle hue walk) for the index-th segment."""
    hue = (index * 137.508) % 360.0
    h = hue / 60.0
    x = 1 - abs(h % 2 - 1)
    r, g, b = [
        (1, x, 0),
        (x, 1, 0),
        (0, 1, x),
        (0, x, 1),
        (x, 0, 1),
        (1, 0, x),
    ][int(h) % 6]
    return (int(55 + 200 * r), int(55 + 200 * g), int(55 + 200 * b))


# Recommended display colours for the spine, as 3D Slicer's generic anatomy colour table draws bone:
# the vertebral levels alternate between two bone tones so neighbours stay distinguishable.
_VERTEBRA_RGB = ((241, 214, 145), (216, 160, 117))


# Nodule segments ("Nodule 1", "Nodule 2", … as reports/nodules.py names them): one colour for all.
NODULE_LABEL = re.compile(r"^Nodule \d+$")
_NODULE_RGB = (255, 128, 0)


def segment_coding(name: str, index: int) -> SegmentCoding:
    """The coding of a label named ``name`` (the ``index``-th segment, 0-based, picks its colour)."""
    if NODULE_LABEL.match(name.strip()):
        return SegmentCoding(
            category=MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
            property_type=NODULE,
            display_color=hd.color.CIELabColor.from_rgb(*_NODULE_RGB),
            is_private=False,
            anatomic_region=LUNG,
        )
    level = vertebra_level(name)
    if level is not None:
        rgb = _VERTEBRA_RGB[index % 2]
        return SegmentCoding(
            category=ANATOMICAL_STRUCTURE,
            property_type=VERTEBRAE[level],
            display_color=hd.color.CIELabColor.from_rgb(*rgb),
            is_private=False,
        )
    # No standard concept is known for this label: keep it, with a private code that is stable for the name.
    value = "L" + hashlib.sha1(name.encode()).hexdigest()[:10].upper()
    return SegmentCoding(
        category=ANATOMICAL_STRUCTURE,
        property_type=private_code(value, name[:64]),
        display_color=hd.color.CIELabColor.from_rgb(*_rgb_for(index)),
        is_private=True,
    )


SCORE_CODES: dict[ScoreKind, hd.sr.CodedConcept] = {
    ScoreKind.PROBABILITY: PROBABILITY,
    ScoreKind.CALIBRATED: CALIBRATED_SCORE,
}


def score_code(kind: ScoreKind) -> hd.sr.CodedConcept:
    """The NUM concept of a classifier score of ``kind``."""
    return SCORE_CODES[ScoreKind(kind)]


def score_kind_of(code: hd.sr.CodedConcept) -> ScoreKind | None:
    """The score kind a NUM concept stands for, ``None`` if it is no score of ours."""
    for kind, known in SCORE_CODES.items():
        if known.value == code.value and known.scheme_designator == code.scheme_designator:
            return kind
    return None


def code_to_classification_label(code: hd.sr.CodedConcept) -> str:
    """The classifier label a finding code stands for (private codes of unknown labels: their meaning)."""
    for label, known in CLASSIFICATION_FINDINGS.items():
        if known.value == code.value and known.scheme_designator == code.scheme_designator:
            return label
    return str(code.meaning)


def classification_code(label: str) -> hd.sr.CodedConcept:
    """The finding code for a classifier label; a stable private code for labels not in the table."""
    known = CLASSIFICATION_FINDINGS.get(label)
    if known is not None:
        return known
    return private_code("F" + hashlib.sha1(label.encode()).hexdigest()[:10].upper(), label[:64])
