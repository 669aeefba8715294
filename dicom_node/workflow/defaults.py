"""The shipped routes: what applies without ``[[routes]]``, written for what modalities really send.

Each default says what the series must be (modality, geometry) in ``match`` and takes any one of several
clues to its anatomy in ``match_any``: a body part, a coded anatomic region, a description (study,
series, requested procedure, procedure code meaning, protocol name; case- and vendor-term tolerant) or,
for a CT, its geometry alone when the tags name no region (``PARTIALBODY``, ``WHOLEBODY``, ``BODY`` or
no body part, and no description naming another region). docs/jobs.md lists the real headers each rule
was checked against.

Tags can lie, pixels cannot: the CT routes require a content check of the chosen series before their
pipeline runs (``requires``; ``pipelines.content_checks``, run by the worker): the nodule pipeline needs
at least 100 ml of air inside the body outline (``lungs``), the vertebra pipeline a bone column behind the
body's centre over most of the series (``spine``). A job whose check fails ends ``skipped`` with what was
measured. So the geometry asks only for what the pipelines can analyse (axial, thin enough, at least
30 mm), and a CT tagged ``PARTIALBODY`` or with no tags at all is routed by geometry and checked on its
pixels: a head, an abdomen or a knee never reaches the nodule pipeline, whatever its tags say.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["DEFAULT_ROUTES"]

# Body Part Examined values (compared without spaces, "_" or "-", in any case).
CHEST_BODY_PARTS = [
    "CHEST", "THORAX", "LUNG", "LUNGS", "TORAX", "CHESTABDOMEN", "THORAXABDOMEN", "CHESTABDOMENPELVIS",
    "THORAXABDOMENPELVIS", "TRUNK",
]  # fmt: skip
SPINE_BODY_PARTS = [
    "SPINE", "CSPINE", "TSPINE", "LSPINE", "WHOLESPINE", "CHEST", "THORAX", "ABDOMEN", "CHESTABDOMEN",
    "THORAXABDOMEN", "ABDOMENPELVIS", "CHESTABDOMENPELVIS", "THORAXABDOMENPELVIS", "TRUNK", "WHOLEBODY",
]  # fmt: skip
# What scanners write when the protocol names no region (Siemens: PARTIALBODY) or nothing at all.
UNSPECIFIC_BODY_PARTS = ["PARTIALBODY", "WHOLEBODY", "BODY", ""]
HEAD_AND_LIMBS = [
    "HEAD", "BRAIN", "SKULL", "HEADNECK", "FACE", "SINUS", "EXTREMITY", "UPPEREXTREMITY",
    "LOWEREXTREMITY", "KNEE", "ANKLE", "FOOT", "HAND", "WRIST", "ELBOW", "FINGER",
]  # fmt: skip
NOT_CHEST_RADIOGRAPH = [
    *HEAD_AND_LIMBS, "SHOULDER", "HIP", "PELVIS", "ABDOMEN", "SPINE", "CSPINE", "TSPINE", "LSPINE",
    "LEG", "ARM", "FEMUR", "HUMERUS",
]  # fmt: skip

# Anatomic Region Sequence: SNOMED CT codes (CID 4031), their SRT ancestors, and the meanings.
CHEST_REGIONS = [
    "51185008", "39607008", "416550000", "416775004", "T-D3000", "T-28000", "CHEST", "THORAX", "LUNG",
]  # fmt: skip
SPINE_REGIONS = [
    *CHEST_REGIONS, "421060004", "122494005", "122495006", "122496007", "818981001", "113345001",
    "38266002", "SPINE", "ABDOMEN", "ENTIRE BODY",
]  # fmt: skip

# Free text: a word for the chest in the languages modalities are set up in (no letter before it, so
# "01_ThoraxRoutine", "RX TORAX" and "CHEST PA" match, and "thoracic spine" does not).
CHEST_WORDS = r"(?i)(?<![a-z])(chest|thorax|t[oó]rax|torace|lung|pulm[oóã]|poumon|polmon|cxr|thx|brustkorb)"
SPINE_WORDS = (
    r"(?i)(?<![a-z])(spine|spinal|vertebr|wirbel|[hbl]ws(?![a-z])|whole.?body|ganzk[oö]rper|trunk|"
    r"chest|thorax|t[oó]rax|abdom|pelvi|becken|lumb)"
)
# A description naming a region other than the chest (for a chest route's geometry-only clue) or other
# than the trunk (for the spine's).
_HEAD = (
    r"head(?![a-z])|brain|skull|cran|cerebr|neuro|kopf|sch[aä]del|sinus|orbit|face(?![a-z])|facial|"
    r"dental|mandib|"
)
_LIMBS = (
    r"h[iü]p(?![a-z])|h[uü]ft|knee|knie|ankle|sprungg|foot|feet|fu[sß](?![a-z])|hand(?![a-z])|wrist|"
    r"finger|elbow|ellbogen|shoulder|schulter|arm(?![a-z])|leg(?![a-z])|bein(?![a-z])|extrem|femur|tibia|"
    r"humer"
)
_TRUNK_NOT_CHEST = r"neck|hals(?![a-z])|cervic|abd|pelvi|becken|spine|wirbel|[hbl]ws(?![a-z])|lumb|sacr|"
NOT_CHEST_WORDS = r"(?i)(?<![a-z])(" + _HEAD + _TRUNK_NOT_CHEST + r"cardi|heart|herz|coronar|" + _LIMBS + ")"
NOT_TRUNK_WORDS = r"(?i)(?<![a-z])(" + _HEAD + _LIMBS + ")"
NOT_CHEST_RADIOGRAPH_WORDS = (
    r"(?i)(?<![a-z])(" + _HEAD + _TRUNK_NOT_CHEST + r"ribs?(?![a-z])|rippe|" + _LIMBS + ")"
)

DEFAULT_ROUTES: tuple[Mapping[str, Any], ...] = (
    {
        "pipeline": "cxr-classification",
        "select": "first",
        "match": {
            "modality": ["CR", "DX"],
            # Stated frontal views only: the classifier was trained on PA/AP chest radiographs, and its
            # pipeline refuses a lateral or unstated view (a job routed here would only fail).
            "view_position": ["PA", "AP"],
            "image_type_not": ["LOCALIZER"],
            "body_part_not": NOT_CHEST_RADIOGRAPH,
        },
        "match_any": [
            {"body_part": CHEST_BODY_PARTS},
            {"anatomic_region": CHEST_REGIONS},
            {"description": CHEST_WORDS},
            # The frontal view alone, when no body part, region or description names anything else.
            {"body_part": [""], "anatomic_region": [""], "description_not": NOT_CHEST_RADIOGRAPH_WORDS},
        ],
    },
    {
        "pipeline": "ct-lung-nodules",
        "select": "thinnest",
        "requires": ["lungs"],
        "match": {
            "modality": "CT",
            "orientation": "axial",
            "slice_thickness": "<= 3",
            "num_instances": ">= 10",
            # The lung check measures whether enough lung is in it; 30 mm is the lung bases of an
            # abdomen CT at least (incidental nodules are found there).
            "extent_mm": ">= 30",
            "image_type_not": ["LOCALIZER"],
            "body_part_not": HEAD_AND_LIMBS,
        },
        "match_any": [
            {"body_part": CHEST_BODY_PARTS},
            {"anatomic_region": CHEST_REGIONS},
            {"description": CHEST_WORDS},
            # Geometry only, when no tag names another region: the lung check decides.
            {"body_part": UNSPECIFIC_BODY_PARTS, "anatomic_region": [""], "description_not": NOT_CHEST_WORDS},
        ],
    },
    {
        "pipeline": "ct-vertebrae",
        "select": "thinnest",
        "requires": ["spine"],
        "match": {
            "modality": "CT",
            "orientation": "axial",
            "slice_thickness": "<= 5",
            # About one vertebra: a vertebral body with its discs is 25–40 mm tall.
            "extent_mm": ">= 30",
            "image_type_not": ["LOCALIZER"],
            "body_part_not": HEAD_AND_LIMBS,
        },
        "match_any": [
            {"body_part": SPINE_BODY_PARTS},
            {"anatomic_region": SPINE_REGIONS},
            {"description": SPINE_WORDS},
            {"body_part": UNSPECIFIC_BODY_PARTS, "anatomic_region": [""], "description_not": NOT_TRUNK_WORDS},
        ],
    },
)
