"""End to end with the real pipelines: the real CT and radiograph sent in come back as SEG and SR, and
OHIF 3.13 displays what the node delivered.

The networks are the exact published architectures with untrained scaffold weights (no published weights
can be downloaded here): the tests prove the plumbing from C-STORE to the destination with the real
pipelines, readers and writers, never the findings' medical value. Scaffold weights run only because the
node sets ``[analysis] allow_untrained = true``, and then every object says UNTRAINED where a reader
looks first (Series Description, the SR's text, the SEG's segment descriptions) and so does ``status``.
The nodule model is left uninstalled so that its job must end ``skipped`` with the reason.

One node run serves both tests (``real_run``, once per module: the vertebra network is the costly part):
a real ``dicom-node serve`` with its DICOMweb on and a real ``dicom-node worker`` deliver to storescp,
with the standard profile and a presentation state per destination. The worker stops once everything
is delivered; ``serve`` stays up for the OHIF test, which gives the OHIF harness (``$DICOM_NODE_OHIF``
or ../shared/tools/ohif, see tests/reports/conftest.py) the study plus everything delivered (every SR
and SEG must be DISPLAYED, with no request leaving loopback), then opens OHIF with the node's DICOMweb
as its only data source (``tests/ohif``), where every SR and SEG must display as well. Without the
harness or Chromium only the OHIF test skips.

The screenshots are kept for a person to look at: in ``$DICOM_NODE_OHIF_SCREENSHOTS`` if set, else
``var/ohif-screenshots/`` of the checkout; the test prints where.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from dicom_node.index.models import Delivery, DeliveryState, Job, JobState
from dicom_node.reports import UNTRAINED_NOTICE
from dicom_node.reports.readback import read_notices
from tests.conftest import DATA
from tests.jobs.conftest import (
    REDIS_URL,
    REPO,
    NodeUnderTest,
    Pacs,
    flushed_redis,
    free_port,
    stop_process,
    wait_for,
)
from tests.ohif.harness import missing, view
from tests.ohif.site import OhifSite
from tests.reports.conftest import HARNESS_INFRASTRUCTURE_EXIT, chromium, ohif_harness, run_ohif_harness

pytestmark = pytest.mark.slow

__all__ = ["chromium", "ohif_harness"]  # the harness fixtures, shared with tests/reports/test_ohif.py

SEG = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
SR_MODALITY, SEG_MODALITY = "SR", "SEG"
# The destination profile whose output OHIF must display, with a Grayscale Softcopy Presentation State
# of the SR's outlines as well.
PROFILE = "standard"
SCREENSHOTS_ENV = "DICOM_NODE_OHIF_SCREENSHOTS"
# The vertebra bundle on CPU is the slow part: about 2 min of CPU, so minutes on 2 free cores, but 10
# and more on a machine shared with other test runs; hence the generous limits.
JOBS_TIMEOUT = 1500
SOURCES = [DATA / "ct" / "totalseg_dicom", DATA / "cxr" / "txrv_siim_cxr_sc_jpeg.dcm"]


def _install_scaffolds(models_dir: Path, work: Path) -> None:
    """A models folder like the repository's (manifests, cards), with scaffold weights imported."""
    from models.installer import import_weights, scaffold

    repo_models = Path(__file__).resolve().parents[2] / "models"
    for folder in repo_models.iterdir():
        if (folder / "configs").is_dir():
            shutil.copytree(folder / "configs", models_dir / folder.name / "configs")
    for name in ("txrv-densenet121-res224-all", "monai-wholebody-ct-segmentation"):
        checkpoint = scaffold(name, work / f"{name}.pt")
        import_weights(checkpoint, models_dir, model=name)


ROUTES = """
[[routes]]
pipeline = "cxr-classification"
select = "first"
[routes.match]
modality = ["CR", "DX"]
view_position = ["PA", "AP"]

[[routes]]
pipeline = "ct-vertebrae"
select = "thinnest"
[routes.match]
modality = "CT"
orientation = "axial"

[[routes]]
pipeline = "ct-lung-nodules"
select = "thinnest"
[routes.match]
modality = "CT"
orientation = "axial"

[analysis]
allow_untrained = true
"""


@dataclass(frozen=True)
class RealRun:
    """The node (``serve`` still running, its DICOMweb on ``web_port``) and what storescp received."""

    node: NodeUnderTest
    pacs: Pacs
    web_port: int
    site: OhifSite  # bound (its origin is in the node's CORS list), started only by the OHIF test
    seconds: float

    def delivered(self) -> list[Any]:
        return [dcmread(p) for p in sorted(self.pacs.folder.iterdir()) if p.is_file()]


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealRun]:
    if shutil.which("storescp") is None:
        pytest.fail("DCMTK storescp is required")
    started = time.monotonic()
    root = tmp_path_factory.mktemp("real-pipelines")
    models_dir = root / "models"
    _install_scaffolds(models_dir, root)
    pacs = Pacs(root / "pacs", free_port())
    node = NodeUnderTest(root / "node", pacs, REDIS_URL)
    node.root.mkdir()
    node.write_config(
        {"profile": PROFILE, "presentation_state": True}, task_time_limit=JOBS_TIMEOUT, running_lease=120
    )
    before_routes = node.config.read_text().split("[[routes]]")[0]
    node.config.write_text(f'models_dir = "{models_dir}"\n' + before_routes + ROUTES)
    site = OhifSite()
    site.bind()
    web_port = free_port()
    queues = flushed_redis(REDIS_URL)
    next(queues)
    try:
        pacs.start()
        node.serve(
            DICOM_NODE_DICOMWEB__ENABLED="true",
            DICOM_NODE_DICOMWEB__PORT=str(web_port),
            DICOM_NODE_DICOMWEB__CORS_ORIGINS=site.url,
        )
        worker = node._start(
            ["worker", "--concurrency", "1"], "worker.log", DICOM_NODE_MODELS_DIR=str(models_dir)
        )
        for options, path in ((("-xv", "+sd"), SOURCES[0]), (("-xy",), SOURCES[1])):
            node.send([path], options=options, timeout=120)

        def finished() -> bool:
            jobs = node.rows(Job)
            return len(jobs) == 3 and all(j.state not in (JobState.QUEUED, JobState.RUNNING) for j in jobs)

        wait_for(finished, JOBS_TIMEOUT, f"the three jobs to finish\n{node.log('worker.log')}")
        wait_for(
            lambda: (d := node.rows(Delivery)) and all(x.state == DeliveryState.DELIVERED for x in d),
            120,
            f"every delivery\n{node.log('worker.log')}",
        )
        jobs = node.rows(Job)
        print(
            "\njob run seconds:",
            {
                j.pipeline: round((j.finished_at - j.started_at).total_seconds())
                for j in jobs
                if j.finished_at
            },
        )
        node.processes.remove(worker)
        stop_process(worker)  # its memory (the vertebra network) is not needed for viewing
        yield RealRun(node, pacs, web_port, site, time.monotonic() - started)
    finally:
        node.stop()
        pacs.stop()
        queues.close()  # flushes the Redis database again


# Each test's limit covers the module's node run, which the first of them to run pays for.
@pytest.mark.timeout(2400)
def test_real_ct_and_radiograph_come_back_as_seg_and_sr(real_run: RealRun) -> None:
    node, pacs = real_run.node, real_run.pacs
    jobs = {j.pipeline: j for j in node.rows(Job)}
    assert jobs["ct-lung-nodules"].state == JobState.SKIPPED
    assert "not installed" in (jobs["ct-lung-nodules"].error or "")
    for name in ("cxr-classification", "ct-vertebrae"):
        assert jobs[name].state == JobState.SUCCEEDED, (name, jobs[name].error, node.log("worker.log"))
        assert jobs[name].model_version.startswith("scaffold-")
    received = [dcmread(p) for p in sorted(pacs.folder.iterdir()) if p.is_file()]
    classes = sorted(str(ds.SOPClassUID) for ds in received)
    assert classes.count(SEG) == 1, classes
    assert classes.count(COMPREHENSIVE_3D_SR) >= 2, classes
    ct_study = str(dcmread(next(SOURCES[0].glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID)
    seg = next(ds for ds in received if str(ds.SOPClassUID) == SEG)
    assert str(seg.StudyInstanceUID) == ct_study
    assert "scaffold-" in str(seg.SoftwareVersions) or any(
        "scaffold-" in str(item.get("AlgorithmVersion", "")) for item in seg.SegmentSequence
    )
    # Untrained weights ran only because allow_untrained is set; every object says so first.
    for ds in received:
        assert str(ds.SeriesDescription).startswith("UNTRAINED AI "), ds.SeriesDescription
        assert "scaffold-" in str(ds.SeriesDescription)
        if str(ds.SOPClassUID) == COMPREHENSIVE_3D_SR:
            assert read_notices(ds) == [UNTRAINED_NOTICE]
    assert {str(item.SegmentDescription) for item in seg.SegmentSequence} == {UNTRAINED_NOTICE}
    status = json.loads(node.cli("status", "--json").stdout)
    assert status["analysis"] == {"allow_untrained": True}
    rows = {p["name"]: p for p in status["pipelines"]}
    assert rows["cxr-classification"]["untrained"] and rows["ct-vertebrae"]["untrained"]
    assert (
        "UNTRAINED" in rows["ct-vertebrae"]["detail"] and "allow_untrained" in rows["ct-vertebrae"]["detail"]
    )


@pytest.mark.timeout(2400)
def test_ohif_displays_the_nodes_own_sr_and_seg(
    ohif_harness: Path,  # first: without the harness or Chromium the test skips before it starts anything
    chromium: str,
    real_run: RealRun,
    tmp_path: Path,
) -> None:
    if (why := missing()) is not None:
        pytest.skip(why)
    started = time.monotonic()
    delivered = real_run.delivered()
    modalities = sorted(str(ds.Modality) for ds in delivered)
    assert modalities.count(SEG_MODALITY) == 1 and modalities.count(SR_MODALITY) >= 2, modalities
    assert "PR" in modalities, modalities
    out = tmp_path / "ohif"
    run = run_ohif_harness(ohif_harness, out, [*SOURCES, real_run.pacs.folder], timeout=600)
    kept = _keep_screenshots(out) if out.is_dir() else None
    print(
        f"\nOHIF screenshots: {kept}; node analysis+delivery {real_run.seconds:.0f} s,"
        f" OHIF check {time.monotonic() - started:.0f} s"
    )
    summary = (out / "summary.txt").read_text() if (out / "summary.txt").exists() else ""
    report = json.loads(path.read_text()) if (path := out / "report.json").exists() else {}
    # The harness's infrastructure exit (2), after a report, has one cause (its ohif_check.py): OHIF's
    # study list was still empty when it looked (stop 17's CI, and one of three whole-suite runs on 2
    # busy cores on 2026-12-01, there in both tries). That screen is not what this test is about: every
    # SR and SEG is checked below, object by object, from the report.
    late_study_list = (
        run.returncode == HARNESS_INFRASTRUCTURE_EXIT and report.get("study_list", {}).get("row_count") == 0
    )
    if late_study_list:
        print("\nOHIF harness: the study list was empty (late under load); every object is checked below")
    assert run.returncode == 0 or late_study_list, (
        f"OHIF check exit {run.returncode}:\n{summary}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    )
    assert report["offsite_requests"] == [], report["offsite_requests"]
    checked = {str(o.get("SOPInstanceUID")): o["status"] for o in _objects(report)}
    wanted = {str(ds.SOPInstanceUID) for ds in delivered if str(ds.Modality) in (SR_MODALITY, SEG_MODALITY)}
    assert wanted <= set(checked), (wanted - set(checked), summary)
    assert all(checked[uid] == "DISPLAYED" for uid in wanted), summary
    _check_through_dicomweb(real_run.site, real_run.web_port, delivered, tmp_path / "ohif-dicomweb")


def _keep_screenshots(out: Path) -> Path:
    target = Path(os.environ.get(SCREENSHOTS_ENV) or REPO / "var" / "ohif-screenshots")
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(out, target)
    return target


def _objects(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [o for study in report["studies"] for o in (*study.get("sr", []), *study.get("seg", []))]


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
