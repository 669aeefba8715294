"""OHIF with the node's DICOMweb as its only data source shows the shared CT, a SEG and an SR.

A hand-filled node (fast: no analysis runs): the CT goes in by C-STORE (storescu), a SEG and an SR made
on it by the OHIF harness's ``make_controls.py`` go in by STOW-RS, and OHIF — served from another
origin, so through the node's CORS — must display both, with no request leaving loopback.
``tests/jobs/test_real_pipelines.py`` does the same with the node's own analysis results.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread

from tests.ohif.harness import missing, view
from tests.ohif.site import OhifSite
from tests.reports.conftest import ohif_harness
from tests.web.conftest import CT_DIR, WebNode, make_web_node

CONTROLS = ("seg_bone_fat.dcm", "sr_ohif_length.dcm")

__all__ = ["ohif_harness"]  # the harness folder fixture ($DICOM_NODE_OHIF or ../shared/tools/ohif)


@pytest.fixture
def site() -> Iterator[OhifSite]:
    if (why := missing()) is not None:
        pytest.skip(why)
    site = OhifSite()
    site.bind()
    try:
        yield site
    finally:
        site.stop()


def controls(harness: Path, out: Path) -> list[Path]:
    """A SEG and an SR on the CT, made by the harness's ``make_controls.py`` (highdicom)."""
    script = harness / "make_controls.py"
    subprocess.run([sys.executable, str(script), str(CT_DIR), str(out)], check=True, timeout=300)
    return [out / name for name in CONTROLS]


def test_ohif_shows_ct_seg_and_sr_from_the_nodes_dicomweb(
    ohif_harness: Path, site: OhifSite, tmp_path: Path
) -> None:
    node: WebNode = make_web_node(tmp_path / "node", tokens=False)
    node.start(DICOM_NODE_DICOMWEB__CORS_ORIGINS=site.url)
    try:
        node.send(CT_DIR)
        objects = [dcmread(p) for p in controls(ohif_harness, tmp_path / "controls")]
        stored = DICOMwebClient(node.url).store_instances(objects)
        assert len(stored.ReferencedSOPSequence) == len(objects)
        study = str(objects[0].StudyInstanceUID)
        site.start(node.url)
        report = view(site, node.url, [study], tmp_path / "ohif")
    finally:
        node.stop()
    entry = report["studies"][0]
    assert {s["modality"] for s in entry["display_sets"]} >= {"CT", "SEG", "SR"}, entry
    statuses = {o["modality"]: o["status"] for o in entry["objects"]}
    assert statuses == {"SEG": "DISPLAYED", "SR": "DISPLAYED"}, (entry, report["console_errors"])
    assert report["offsite_requests"] == []
    assert report["exit_status"] == 0
