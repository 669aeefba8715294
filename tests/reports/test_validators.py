"""Every object we write passes dciodvfy without errors; DCMTK renders every SR."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from dicom_node.reports import (
    DEFAULT_PROFILE,
    LABELMAP_PROFILE,
    OHIF_PROFILE,
    CompanionType,
    ReportProfile,
    write_results,
)
from pipelines.findings import Findings, ScoreKind

from .conftest import classification_result, nodule_result, untrained, vertebra_result
from .data import ct_series, cxr
from .tools import dciodvfy_errors, run_dcmtk

WITH_COMPANION = ReportProfile(companion=CompanionType.SECONDARY_CAPTURE)
PROFILES = {
    "default": DEFAULT_PROFILE,
    "labelmap": LABELMAP_PROFILE,
    "ohif": OHIF_PROFILE,
    "sc": WITH_COMPANION,
}


def _cases() -> list[tuple[str, Findings, list[pydicom.Dataset]]]:
    return [
        ("cxr", classification_result(), [cxr()]),
        ("nodules", nodule_result(), list(ct_series())),
        ("vertebrae", vertebra_result(), list(ct_series())),
        # Untrained weights (the notice in SR, SEG and companion) and a calibrated score.
        ("cxr-untrained", untrained(classification_result(ScoreKind.CALIBRATED)), [cxr()]),
        ("vertebrae-untrained", untrained(vertebra_result()), list(ct_series())),
    ]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, Path, pydicom.Dataset]]:
    out = tmp_path_factory.mktemp("objects")
    files = []
    for case, result, sources in _cases():
        for name, profile in PROFILES.items():
            for i, ds in enumerate(write_results(result, sources, profile)):
                path = out / f"{case}-{name}-{i}-{ds.Modality}.dcm"
                ds.save_as(path, enforce_file_format=True)
                files.append((f"{case}/{name}/{ds.Modality}", path, ds))
    return files


def test_every_object_kind_is_written(written: list[tuple[str, Path, pydicom.Dataset]]) -> None:
    modalities = {key.split("/")[0] + "/" + key.split("/")[2] for key, _, _ in written}
    assert {"cxr/SR", "cxr/OT", "nodules/SR", "vertebrae/SEG", "vertebrae/SR"} <= modalities


def test_dciodvfy_reports_no_error(written: list[tuple[str, Path, pydicom.Dataset]]) -> None:
    failures = []
    for key, path, ds in written:
        labelmap = (
            ds.get("SegmentationType") == hd.seg.SegmentationTypeValues.LABELMAP.value or "/labelmap/" in key
        )
        errors, output = dciodvfy_errors(path, labelmap=labelmap)
        if errors:
            failures.append(f"{key} ({path.name}):\n{output}")
    assert not failures, "dciodvfy found errors:\n" + "\n".join(failures)


def test_dcmtk_renders_every_sr(written: list[tuple[str, Path, pydicom.Dataset]]) -> None:
    srs = [(key, path) for key, path, ds in written if ds.Modality == "SR"]
    assert srs
    for key, path in srs:
        for tool in ("dsrdump", "dsr2html"):
            run = run_dcmtk(tool, path, references_labelmap="/labelmap/" in key)
            assert run.returncode == 0, f"{tool} failed on {key}:\n{run.stdout}\n{run.stderr}"
            assert "E:" not in run.stderr, f"{tool} complained about {key}:\n{run.stderr}"
            assert "Measurement Group" in run.stdout or "Imaging Measurements" in run.stdout, run.stdout[
                :2000
            ]
