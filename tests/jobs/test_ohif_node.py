"""OHIF 3.13 displays what the node itself delivers: the shared CT and radiograph sent in, their SR and SEG.

A real node (``dicom-node serve`` and a real ``dicom-node worker``) runs the real pipelines with scaffold
weights (as tests/jobs/test_real_pipelines.py does) and delivers to storescp; the OHIF harness
(``$DICOM_NODE_OHIF`` or ../shared/tools/ohif, see tests/reports/conftest.py) is given the study plus
everything delivered, and every SR and SEG must be DISPLAYED, with no request leaving loopback.

The node keeps its own results too, so its DICOMweb holds the studies with their SR and SEG: a second
check opens OHIF with the node's DICOMweb as its only data source (``tests/ohif``) and every SR and SEG
must display there as well.

The screenshots are kept for a person to look at: in ``$DICOM_NODE_OHIF_SCREENSHOTS`` if set, else
``var/ohif-screenshots/`` of the checkout; the test prints where.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from dicom_node.index.models import Delivery, DeliveryState, Job, JobState
from tests.jobs.conftest import REPO, NodeUnderTest, Pacs, free_port, wait_for
from tests.jobs.test_real_pipelines import ROUTES, _install_scaffolds
from tests.ohif.harness import missing, view
from tests.ohif.site import OhifSite
from tests.reports.conftest import chromium, ohif_harness, run_ohif_harness

pytestmark = pytest.mark.slow

__all__ = ["chromium", "ohif_harness"]  # the harness fixtures, shared with tests/reports/test_ohif.py

# The destination profile whose output OHIF must display. "ohif" until the standard profile's SRs
# display in OHIF (task "air"); then "standard", and the "ohif" profile may go.
PROFILE = "standard"
# Each destination may also get a Grayscale Softcopy Presentation State with the SR's outlines.
PRESENTATION_STATE = True
SCREENSHOTS_ENV = "DICOM_NODE_OHIF_SCREENSHOTS"
JOBS_TIMEOUT = 1500

SR_MODALITY, SEG_MODALITY = "SR", "SEG"


def _send(node: NodeUnderTest, test_data: Path) -> None:
    for options, path in (
        (("-xv", "+sd"), test_data / "ct" / "totalseg_dicom"),
        (("-xy",), test_data / "cxr" / "txrv_siim_cxr_sc_jpeg.dcm"),
    ):
        node.send([path], options=options, timeout=120)


def _delivered(node: NodeUnderTest, pacs: Pacs) -> Path:
    def finished() -> bool:
        jobs = node.rows(Job)
        return len(jobs) == 3 and all(j.state not in (JobState.QUEUED, JobState.RUNNING) for j in jobs)

    # The vertebra bundle on CPU is the slow part: about 2 min of CPU, so minutes on 2 free cores, but
    # 10 and more on a machine shared with other test runs; hence the generous limits.
    wait_for(finished, JOBS_TIMEOUT, "the three jobs to finish")
    jobs = {j.pipeline: j for j in node.rows(Job)}
    print(
        "\njob run seconds:",
        {
            n: round((j.finished_at - j.started_at).total_seconds())
            for n, j in jobs.items()
            if j.started_at and j.finished_at
        },
    )
    for name in ("cxr-classification", "ct-vertebrae"):
        assert jobs[name].state == JobState.SUCCEEDED, (name, jobs[name].error, node.log("worker.log"))
    wait_for(
        lambda: (d := node.rows(Delivery)) and all(x.state == DeliveryState.DELIVERED for x in d),
        120,
        "every delivery",
    )
    return pacs.folder


def _keep_screenshots(out: Path) -> Path:
    target = Path(os.environ.get(SCREENSHOTS_ENV) or REPO / "var" / "ohif-screenshots")
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(out, target)
    return target


def _objects(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [o for study in report["studies"] for o in (*study.get("sr", []), *study.get("seg", []))]


@pytest.mark.timeout(2400)
def test_ohif_displays_the_nodes_own_sr_and_seg(
    ohif_harness: Path,  # first: without the harness or Chromium the test skips before it starts anything
    chromium: str,
    tmp_path: Path,
    redis_db: object,
    pacs: Pacs,
    node_factory: Any,
    test_data: Path,
) -> None:
    started = time.monotonic()
    models_dir = tmp_path / "models"
    _install_scaffolds(models_dir, tmp_path)
    pacs.start()
    node = node_factory(
        task_time_limit=JOBS_TIMEOUT,
        running_lease=120,
        destination_options={
            "profile": PROFILE,
            **({"presentation_state": True} if PRESENTATION_STATE else {}),
        },
    )
    before_routes = node.config.read_text().split("[[routes]]")[0]
    node.config.write_text(f'models_dir = "{models_dir}"\n' + before_routes + ROUTES)
    if (why := missing()) is not None:
        pytest.skip(why)
    site = OhifSite()
    site.bind()
    web_port = free_port()
    node.serve(
        DICOM_NODE_DICOMWEB__ENABLED="true",
        DICOM_NODE_DICOMWEB__PORT=str(web_port),
        DICOM_NODE_DICOMWEB__CORS_ORIGINS=site.url,
    )
    node._start(["worker", "--concurrency", "1"], "worker.log", DICOM_NODE_MODELS_DIR=str(models_dir))
    _send(node, test_data)
    folder = _delivered(node, pacs)
    analysed = time.monotonic()

    delivered = [dcmread(p, stop_before_pixels=True) for p in sorted(folder.iterdir()) if p.is_file()]
    modalities = sorted(str(ds.Modality) for ds in delivered)
    assert modalities.count(SEG_MODALITY) == 1 and modalities.count(SR_MODALITY) >= 2, modalities
    if PRESENTATION_STATE:
        assert "PR" in modalities, modalities
    out = tmp_path / "ohif"
    sources = [test_data / "ct" / "totalseg_dicom", test_data / "cxr" / "txrv_siim_cxr_sc_jpeg.dcm"]
    run = run_ohif_harness(ohif_harness, out, [*sources, folder], timeout=600)
    viewed = time.monotonic()
    kept = _keep_screenshots(out) if out.is_dir() else None
    print(
        f"\nOHIF screenshots: {kept}; node analysis+delivery {analysed - started:.0f} s,"
        f" OHIF check {viewed - analysed:.0f} s"
    )
    summary = (out / "summary.txt").read_text() if (out / "summary.txt").exists() else ""
    assert run.returncode == 0, (
        f"OHIF check exit {run.returncode}:\n{summary}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    )
    report = json.loads((out / "report.json").read_text())
    assert report["offsite_requests"] == [], report["offsite_requests"]
    checked = {str(o.get("SOPInstanceUID")): o["status"] for o in _objects(report)}
    wanted = {str(ds.SOPInstanceUID) for ds in delivered if str(ds.Modality) in (SR_MODALITY, SEG_MODALITY)}
    assert wanted <= set(checked), (wanted - set(checked), summary)
    assert all(checked[uid] == "DISPLAYED" for uid in wanted), summary
    _check_through_dicomweb(site, web_port, delivered, tmp_path / "ohif-dicomweb")


def _check_through_dicomweb(site: OhifSite, web_port: int, delivered: list[Any], out: Path) -> None:
    """OHIF with the node's DICOMweb as its only data source shows every delivered SR and SEG."""
    dicomweb = f"http://127.0.0.1:{web_port}/dicom-web"
    site.start(dicomweb)
    try:
        studies = sorted({str(ds.StudyInstanceUID) for ds in delivered})
        report = view(site, dicomweb, studies, out)
    finally:
        site.stop()
    kept = _keep_screenshots_as(out, "ohif-dicomweb-screenshots")
    print(f"\nOHIF over the node's DICOMweb: screenshots in {kept}")
    assert report["offsite_requests"] == [], report["offsite_requests"]
    wanted = {
        (str(ds.SeriesInstanceUID), str(ds.Modality))
        for ds in delivered
        if str(ds.Modality) in (SR_MODALITY, SEG_MODALITY)
    }
    checked = {(o["series"], o["modality"]): o["status"] for s in report["studies"] for o in s["objects"]}
    assert wanted <= set(checked), (wanted - set(checked), report)
    assert all(checked[key] == "DISPLAYED" for key in wanted), report


def _keep_screenshots_as(out: Path, name: str) -> Path:
    target = Path(os.environ.get(SCREENSHOTS_ENV) or REPO / "var" / "ohif-screenshots").with_name(name)
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(out, target)
    return target
