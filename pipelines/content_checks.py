"""Content checks: is what a pipeline needs in the field of view? Measured on pixels, not tags.

A route may require them (``requires = ["lungs"]``) before its pipeline runs; each answers with a
verdict, the figures it measured and a sentence that says both. They look at the series at low
resolution (``content_sample``: at most 16 slices at least 5 mm apart, pixels of about 2.5 mm), so a
series costs the decoding of a few slices, not of the volume.

``lungs``: air (HU < -400) *inside the body outline* — the body is the largest connected component of
HU > -500 over the sampled slices, holes filled slice by slice, so the air around the patient and under
the table does not count and the lungs, which the chest wall encloses, do. Volume in ml over the
extent; it passes with at least ``LUNG_MIN_ML`` (100 ml: a pair of adult lungs holds 4–6 l, a CT of the
lung bases a few hundred ml; sinuses, mastoids and the airway of a head CT hold a few tens).

``spine``: a bone column along the slice axis. On each sampled slice, bone (HU > 200) in a window behind
the body's centre (patient y greater than the centre's) and within 25 mm of the midline (the centre's
patient x), at least 15 mm inside the body outline (the skull, the ribs' outer arcs and the scapulae are
nearer the skin); a slice counts when that bone covers at least ``VERTEBRA_MIN_CM2`` (4 cm²: a cervical
vertebral body is about 3–4 cm², a lumbar one 12–18 cm², posterior elements add more). It passes when
at least ``SPINE_MIN_FRACTION`` (60 %) of the sampled slices count. Only axial series are measured.

Radiographs need no content check: the chest radiograph classifier's route already asks for a stated
frontal view and a chest clue, and a projection image has no depth to measure air volume in.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from pipelines.content_sample import SeriesSample, read_sample

__all__ = [
    "CHECKS",
    "LUNG_MIN_ML",
    "SPINE_MIN_FRACTION",
    "VERTEBRA_MIN_CM2",
    "CheckResult",
    "ContentReport",
    "check_lungs",
    "check_spine",
    "run_checks",
]

CHECKS = ("lungs", "spine")
AIR_HU = -400.0
BODY_HU = -500.0
BONE_HU = 200.0
LUNG_MIN_ML = 100.0
VERTEBRA_MIN_CM2 = 4.0
SPINE_WINDOW_MM = 25.0
SPINE_DEPTH_MM = 15.0
SPINE_MIN_FRACTION = 0.6


@dataclass(frozen=True)
class CheckResult:
    """One check's verdict, what it measured (``figures``, JSON numbers) and a sentence saying both."""

    name: str
    passed: bool
    reason: str
    figures: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        return {"passed": self.passed, "reason": self.reason, "figures": self.figures}


@dataclass(frozen=True)
class ContentReport:
    """The checks asked for, on one series, with how much of it was looked at and how long it took."""

    checks: tuple[CheckResult, ...]
    sampled_slices: int
    slices: int
    seconds: float

    @property
    def failed(self) -> tuple[CheckResult, ...]:
        return tuple(c for c in self.checks if not c.passed)

    def as_json(self) -> dict[str, object]:
        return {
            "checks": {c.name: c.as_json() for c in self.checks},
            "sampled_slices": self.sampled_slices,
            "slices": self.slices,
            "seconds": round(self.seconds, 3),
        }


def _body(hu: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
    """The body outline: the largest 3-D component of HU > -500, holes filled on every slice."""
    labels, count = ndimage.label(hu > BODY_HU)
    if count == 0:
        return np.zeros(hu.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = labels == int(sizes.argmax())
    return np.stack([ndimage.binary_fill_holes(plane) for plane in body]).astype(bool)


def check_lungs(sample: SeriesSample, body: npt.NDArray[np.bool_] | None = None) -> CheckResult:
    """Air inside the body outline, in ml; passes at ``LUNG_MIN_ML``."""
    body = _body(sample.hu) if body is None else body
    air = body & (sample.hu < AIR_HU)
    ml = float(air.sum()) * sample.pixel_area_mm2 * sample.slab_mm / 1000.0
    body_ml = float(body.sum()) * sample.pixel_area_mm2 * sample.slab_mm / 1000.0
    figures = {"air_ml": round(ml, 1), "body_ml": round(body_ml, 1), "min_ml": LUNG_MIN_ML}
    measured = f"{ml:.0f} ml of air inside the body (needs {LUNG_MIN_ML:.0f} ml)"
    if ml >= LUNG_MIN_ML:
        return CheckResult("lungs", True, f"lungs in field of view: {measured}", figures)
    word = "no lung" if ml < LUNG_MIN_ML / 4 else "too little lung"
    return CheckResult("lungs", False, f"{word} in field of view: {measured}", figures)


def _vertebra_cm2(sample: SeriesSample, body: npt.NDArray[np.bool_], index: int) -> float:
    """Bone behind the body's centre, near the midline and deep inside the body, on one slice (cm²)."""
    inside = body[index]
    if not inside.any():
        return 0.0
    x, y = sample.x_mm[index], sample.y_mm[index]
    centre_x, centre_y = float(x[inside].mean()), float(y[inside].mean())
    spacing = float(np.sqrt(sample.pixel_area_mm2))
    depth = ndimage.distance_transform_edt(inside, sampling=(spacing, spacing))
    window = (np.abs(x - centre_x) <= SPINE_WINDOW_MM) & (y > centre_y) & (depth >= SPINE_DEPTH_MM)
    bone = window & (sample.hu[index] > BONE_HU)
    return float(bone.sum()) * sample.pixel_area_mm2 / 100.0


def check_spine(sample: SeriesSample, body: npt.NDArray[np.bool_] | None = None) -> CheckResult:
    """The fraction of sampled slices with a vertebra-sized bone blob; passes at ``SPINE_MIN_FRACTION``."""
    if sample.normal_z < 0.8:
        return CheckResult(
            "spine", False, "spine not measured: the series is not axial", {"slices_with_bone": 0}
        )
    body = _body(sample.hu) if body is None else body
    areas = [_vertebra_cm2(sample, body, i) for i in range(len(sample.hu))]
    count = sum(area >= VERTEBRA_MIN_CM2 for area in areas)
    fraction = count / len(areas)
    figures = {
        "slices_with_vertebra": float(count),
        "sampled_slices": float(len(areas)),
        "fraction": round(fraction, 3),
        "min_fraction": SPINE_MIN_FRACTION,
        "median_cm2": round(float(np.median(areas)), 1),
    }
    measured = (
        f"a vertebra-sized bone blob (≥ {VERTEBRA_MIN_CM2:g} cm² behind the body centre) in {count} of"
        f" {len(areas)} sampled slices over {sample.extent_mm:.0f} mm (needs {SPINE_MIN_FRACTION:.0%})"
    )
    if fraction >= SPINE_MIN_FRACTION:
        return CheckResult("spine", True, f"spine in field of view: {measured}", figures)
    return CheckResult("spine", False, f"no spine in field of view: {measured}", figures)


def run_checks(paths: Sequence[str | Path], names: Sequence[str]) -> ContentReport:
    """Run the checks ``names`` (each one of ``CHECKS``) on one CT series.

    ``ValueError`` for an unknown name; ``PipelineInputError`` for a series that cannot be read.
    """
    if unknown := [n for n in names if n not in CHECKS]:
        raise ValueError(f'Argument "names" holds unknown checks {unknown}; known: {", ".join(CHECKS)}')
    started = time.perf_counter()
    sample = read_sample(paths)
    body = _body(sample.hu)
    checks = {"lungs": check_lungs, "spine": check_spine}
    results = [checks[name](sample, body) for name in dict.fromkeys(names)]
    return ContentReport(tuple(results), len(sample.hu), sample.slices, time.perf_counter() - started)
