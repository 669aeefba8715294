"""Anatomy for generated CT slices (``tests.factories.write_ct_series(phantom=...)``), in HU.

Each phantom draws one axial slice centred on the patient's axis: columns run to the patient's left
(+x), rows to the back (+y), as ``ct_slice`` writes them (ImageOrientationPatient 1\\0\\0\\0\\1\\0).
Sizes are an adult's, in mm, so that the content checks measure what they would on a patient:
``head`` (scalp, a 7 mm skull ring, brain, a frontal sinus; no lungs, no spine), ``chest`` (body,
two lungs of about 2 l each over 160 mm, a vertebra behind the centre; ``spine=False`` leaves it
out) and ``abdomen`` (body, liver, a vertebra, a pocket of bowel gas; no lungs).
"""

from __future__ import annotations

from typing import Any

import numpy as np

AIR, FAT, SOFT, BRAIN, LUNG, BONE, CORTEX = -1000, -100, 40, 35, -850, 450, 1200


def _grid(rows: int, columns: int, spacing: float) -> tuple[Any, Any]:
    y, x = np.mgrid[:rows, :columns].astype(np.float64)
    return (x - columns / 2) * spacing, (y - rows / 2) * spacing


def _ellipse(x: Any, y: Any, cx: float, cy: float, ax: float, ay: float) -> Any:
    return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 < 1


def head(z: float, rows: int, columns: int, spacing: float) -> np.ndarray[Any, Any]:
    """A head: scalp, skull ring, brain; a small frontal sinus in the upper 20 mm of its slices."""
    x, y = _grid(rows, columns, spacing)
    hu = np.full((rows, columns), AIR, dtype=np.int16)
    hu[_ellipse(x, y, 0, 0, 80, 98)] = SOFT
    hu[_ellipse(x, y, 0, 0, 75, 93)] = CORTEX
    hu[_ellipse(x, y, 0, 0, 68, 86)] = BRAIN
    if -20 <= z <= 0:
        hu[_ellipse(x, y, 0, -80, 12, 6)] = AIR
    return hu


def chest(z: float, rows: int, columns: int, spacing: float, spine: bool = True) -> np.ndarray[Any, Any]:
    """A chest: body, subcutaneous fat, two lungs, and (unless ``spine=False``) a thoracic vertebra."""
    x, y = _grid(rows, columns, spacing)
    hu = np.full((rows, columns), AIR, dtype=np.int16)
    hu[_ellipse(x, y, 0, 0, 165, 115)] = FAT
    hu[_ellipse(x, y, 0, 0, 155, 105)] = SOFT
    hu[_ellipse(x, y, -75, -5, 55, 75)] = LUNG
    hu[_ellipse(x, y, 75, -5, 55, 75)] = LUNG
    if spine:
        hu[_ellipse(x, y, 0, 55, 17, 15)] = BONE
        hu[_ellipse(x, y, 0, 85, 5, 14)] = BONE  # spinous process
    return hu


def lungs_only(z: float, rows: int, columns: int, spacing: float) -> np.ndarray[Any, Any]:
    """The chest without its vertebra (lungs in the field of view, no spine)."""
    return chest(z, rows, columns, spacing, spine=False)


def abdomen(z: float, rows: int, columns: int, spacing: float) -> np.ndarray[Any, Any]:
    """An abdomen: body, liver, a lumbar vertebra, 10 × 10 mm of bowel gas (no lungs)."""
    x, y = _grid(rows, columns, spacing)
    hu = np.full((rows, columns), AIR, dtype=np.int16)
    hu[_ellipse(x, y, 0, 0, 160, 115)] = FAT
    hu[_ellipse(x, y, 0, 0, 150, 105)] = SOFT
    hu[_ellipse(x, y, -60, -10, 70, 60)] = 60
    hu[_ellipse(x, y, 0, 50, 22, 17)] = BONE
    hu[_ellipse(x, y, 0, 82, 5, 12)] = BONE
    hu[_ellipse(x, y, 60, -40, 5, 5)] = AIR
    return hu
