"""A source without the Type 2 patient attributes (a de-identified radiograph) still gets its results.

Found when the turnaround bench sent a radiograph without Patient's Name and Birth Date: highdicom read
them as attributes and the job failed with a bare ``AttributeError``. The results now carry them empty,
as the standard says an unknown Type 2 value is.
"""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import pydicom
import pytest

from dicom_node.reports import write_results

from .conftest import classification_result
from .data import cxr

STRIPPED = ("PatientName", "PatientBirthDate", "PatientSex", "ReferringPhysicianName", "StudyID")


def test_a_radiograph_without_patient_attributes_gets_an_sr_with_them_empty(tmp_path: Path) -> None:
    result = classification_result()
    source = copy.deepcopy(cxr())  # cxr() is shared by the other tests: strip a copy
    for keyword in STRIPPED:
        if keyword in source:
            delattr(source, keyword)
    assert not any(keyword in source for keyword in STRIPPED)
    objects = write_results(result, [source])
    assert objects, "no result objects"
    for ds in objects:
        for keyword in STRIPPED:
            assert keyword in ds and not ds[keyword].value, (ds.Modality, keyword)
        assert ds.PatientID == cxr().PatientID  # what the source had is kept
    path = tmp_path / "sr.dcm"
    sr = next(ds for ds in objects if ds.Modality == "SR")
    sr.save_as(path, enforce_file_format=True)
    dciodvfy = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    errors = [line for line in dciodvfy.stderr.splitlines() if line.startswith("Error")]
    if "command not found" in dciodvfy.stderr:  # pragma: no cover - scripts/setup --test installs it
        pytest.skip("dciodvfy is not installed")
    assert not errors, "\n".join(errors)
    assert pydicom.dcmread(path).PatientName == ""
