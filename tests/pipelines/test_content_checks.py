"""The content checks on the shared CT, on variants of it, and on generated head, chest and abdomen CTs.

The generated slices are adult-sized phantoms (``tests/phantoms.py``) at 2 mm pixels; the shared CT is
the real Siemens series (lower thorax: lung bases, T11 and T12), decoded from JPEG 2000.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pipelines.content_checks import CHECKS, LUNG_MIN_ML, run_checks
from pipelines.errors import PipelineInputError
from tests import phantoms
from tests.conftest import CT_DIR
from tests.factories import UNTAGGED_CT, write_ct_series


def _series(tmp_path: Path, name: str, count: int = 64) -> list[Path]:
    return write_ct_series(
        tmp_path / name,
        count,
        rows=200,
        columns=200,
        spacing=2.0,
        thickness=2.5,
        headers=UNTAGGED_CT,
        phantom=getattr(phantoms, name),
    )


def _checks(paths: list[Path]) -> dict[str, tuple[bool, dict[str, float], str]]:
    report = run_checks(paths, CHECKS)
    return {c.name: (c.passed, c.figures, c.reason) for c in report.checks}


def _variant(tmp_path: Path, name: str, change, order=lambda paths: paths) -> list[Path]:
    """The shared CT rewritten uncompressed, with ``change(hu, ds)`` applied to every slice's pixels."""
    folder = tmp_path / name
    folder.mkdir()
    series_uid = generate_uid()
    written = []
    for index, path in enumerate(sorted(CT_DIR.glob("*.dcm"))):
        ds = pydicom.dcmread(path)
        hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        hu = change(hu, ds)
        stored = np.round((hu - float(ds.RescaleIntercept)) / float(ds.RescaleSlope))
        ds.PixelData = np.clip(stored, 0, 65535).astype(np.uint16).tobytes()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        out = folder / f"{index:03d}.dcm"
        ds.save_as(out, enforce_file_format=True)
        written.append(out)
    return order(written)


def test_the_shared_ct_shows_its_spine_and_too_little_lung():
    checks = _checks(sorted(CT_DIR.glob("*.dcm")))
    passed, figures, reason = checks["spine"]
    assert passed, reason
    assert figures["slices_with_vertebra"] == figures["sampled_slices"] == 8
    assert 8 <= figures["median_cm2"] <= 20  # T11/T12: vertebral body and posterior elements
    passed, figures, reason = checks["lungs"]
    # Lung bases only: tens of ml of air inside the body, under the nodule pipeline's 100 ml.
    assert not passed and 30 <= figures["air_ml"] < LUNG_MIN_ML, figures
    measured = f"{figures['air_ml']:.0f} ml of air inside the body (needs 100 ml)"
    assert reason == f"too little lung in field of view: {measured}"
    assert 2000 < figures["body_ml"] < 6000  # 40 mm of an adult trunk (and arms)


def test_a_head_ct_has_neither_lungs_nor_spine(tmp_path):
    checks = _checks(_series(tmp_path, "head"))
    passed, figures, reason = checks["lungs"]
    assert not passed and figures["air_ml"] < 25  # the frontal sinus only
    assert reason.startswith("no lung in field of view: ") and reason.endswith("(needs 100 ml)")
    passed, figures, reason = checks["spine"]
    # The skull ring lies behind the centre too, but within 15 mm of the outline: no vertebra.
    assert not passed and figures["slices_with_vertebra"] == 0, reason
    assert reason.startswith("no spine in field of view: ")


def test_chest_lungs_only_and_abdomen_variants(tmp_path):
    chest = _checks(_series(tmp_path, "chest"))
    assert chest["lungs"][0] and chest["lungs"][1]["air_ml"] > 3000
    assert chest["spine"][0] and chest["spine"][1]["fraction"] == 1.0
    lungs_only = _checks(_series(tmp_path, "lungs_only"))
    assert lungs_only["lungs"][0] and not lungs_only["spine"][0]
    abdomen = _checks(_series(tmp_path, "abdomen"))
    assert not abdomen["lungs"][0] and 0 < abdomen["lungs"][1]["air_ml"] < 50  # bowel gas only
    assert abdomen["spine"][0]


def test_variants_of_the_shared_ct(tmp_path):
    # Its bones replaced by soft tissue: the lungs stay, the spine goes.
    boneless = _checks(_variant(tmp_path, "boneless", lambda hu, ds: np.where(hu > 150, 40.0, hu)))
    assert not boneless["spine"][0] and boneless["spine"][1]["slices_with_vertebra"] == 0

    # Feet first, columns mirrored (the same patient seen from the other side), sent in reverse order:
    # the same figures, since posterior and midline are patient directions.
    def mirror(hu, ds):
        ds.ImageOrientationPatient = [-1, 0, 0, 0, 1, 0]
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x + (ds.Columns - 1) * float(ds.PixelSpacing[1]), y, z]
        return hu[:, ::-1]

    original = _checks(sorted(CT_DIR.glob("*.dcm")))
    mirrored = _checks(_variant(tmp_path, "mirrored", mirror, order=lambda p: list(reversed(p))))
    for name in CHECKS:
        assert mirrored[name][0] == original[name][0]
        assert mirrored[name][1] == pytest.approx(original[name][1], rel=0.02), name


def test_unknown_checks_and_unreadable_series_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown checks \\['lung'\\]; known: lungs, spine"):
        run_checks(sorted(CT_DIR.glob("*.dcm")), ["lung"])
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"not dicom")
    with pytest.raises(PipelineInputError, match=r"broken\.dcm: not a readable DICOM file"):
        run_checks([broken], ["lungs"])


def test_a_legacy_converted_multiframe_ct_gives_the_same_figures(tmp_path):
    # One Legacy Converted Enhanced CT object (highdicom) holding the shared CT's 20 slices as frames:
    # geometry and rescale come from the functional groups, and only the sampled frames are decoded.
    import highdicom as hd

    slices = [pydicom.dcmread(path) for path in sorted(CT_DIR.glob("*.dcm"))]
    for ds in slices:
        ds.decompress()
    image = hd.legacy.LegacyConvertedEnhancedCTImage(
        slices,
        series_instance_uid=generate_uid(),
        series_number=9,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    path = tmp_path / "multiframe.dcm"
    image.save_as(path)
    multiframe = run_checks([path], CHECKS)
    single = run_checks(sorted(CT_DIR.glob("*.dcm")), CHECKS)
    assert (multiframe.slices, multiframe.sampled_slices) == (20, 8)
    assert [c.as_json() for c in multiframe.checks] == [c.as_json() for c in single.checks]
