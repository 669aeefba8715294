"""A real viewer: OHIF 3.13 (harness in $DICOM_NODE_OHIF) displays every SR and SEG (one shape for all)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dicom_node.reports import DEFAULT_PROFILE, write_results

from .conftest import classification_result, nodule_result, run_ohif_harness, vertebra_result
from .data import CT_DIR, CXR, ct_series, cxr


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ohif_displays_every_sr_and_seg(tmp_path: Path, ohif_harness: Path, chromium: str) -> None:
    objects_dir = tmp_path / "objects"
    objects_dir.mkdir()
    for case, result, sources in (
        ("cxr", classification_result(), [cxr()]),
        ("nodules", nodule_result(), list(ct_series())),
        ("vertebrae", vertebra_result(), list(ct_series())),
    ):
        for i, ds in enumerate(write_results(result, sources, DEFAULT_PROFILE)):
            ds.save_as(objects_dir / f"{case}-{i}-{ds.Modality}.dcm", enforce_file_format=True)
    out = tmp_path / "ohif"
    run = run_ohif_harness(ohif_harness, out, [CT_DIR, CXR, objects_dir], timeout=840)
    summary = (out / "summary.txt").read_text() if (out / "summary.txt").exists() else ""
    assert run.returncode == 0, (
        f"OHIF check exit {run.returncode}:\n{summary}\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
    )
    assert "non-loopback requests: []" in summary, summary
    assert json.loads((out / "report.json").read_text())  # machine-readable results were written
