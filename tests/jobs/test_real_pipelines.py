"""End to end with the real pipelines: the real CT and radiograph sent in come back as SEG and SR.

The networks are the exact published architectures with untrained scaffold weights (no published weights
can be downloaded here): the test proves the plumbing from C-STORE to the destination with the real
pipelines, readers and writers, never the findings' medical value. Scaffold weights run only because the
node sets ``[analysis] allow_untrained = true``, and then every object says UNTRAINED where a reader
looks first (Series Description, the SR's text, the SEG's segment descriptions) and so does ``status``.
The nodule model is left uninstalled so that its job must end ``skipped`` with the reason.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_node.index.models import Delivery, DeliveryState, Job, JobState
from dicom_node.reports import UNTRAINED_NOTICE
from dicom_node.reports.readback import read_notices
from tests.jobs.conftest import wait_for

pytestmark = pytest.mark.slow

SEG = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


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


def test_real_ct_and_radiograph_come_back_as_seg_and_sr(tmp_path, redis_db, pacs, node_factory, test_data):
    models_dir = tmp_path / "models"
    _install_scaffolds(models_dir, tmp_path)
    pacs.start()
    node = node_factory(task_time_limit=600, running_lease=120)
    config = node.config.read_text()
    before_routes = config.split("[[routes]]")[0]
    node.config.write_text(f'models_dir = "{models_dir}"\n' + before_routes + ROUTES)
    node.serve()
    node._start(["worker", "--concurrency", "1"], "worker.log", DICOM_NODE_MODELS_DIR=str(models_dir))

    for options, path in (
        (["-xv", "+sd"], test_data / "ct" / "totalseg_dicom"),
        (["-xy"], test_data / "cxr" / "txrv_siim_cxr_sc_jpeg.dcm"),
    ):
        node.send([path], options=tuple(options), timeout=120)

    def finished() -> bool:
        jobs = node.rows(Job)
        return len(jobs) == 3 and all(j.state not in (JobState.QUEUED, JobState.RUNNING) for j in jobs)

    wait_for(finished, 600, "the three jobs to finish")
    jobs = {j.pipeline: j for j in node.rows(Job)}
    assert jobs["ct-lung-nodules"].state == JobState.SKIPPED
    assert "not installed" in (jobs["ct-lung-nodules"].error or "")
    for name in ("cxr-classification", "ct-vertebrae"):
        assert jobs[name].state == JobState.SUCCEEDED, (name, jobs[name].error, node.log("worker.log"))
        assert jobs[name].model_version.startswith("scaffold-")

    wait_for(
        lambda: (d := node.rows(Delivery)) and all(x.state == DeliveryState.DELIVERED for x in d),
        120,
        "every delivery",
    )
    received = [dcmread(p) for p in sorted(pacs.folder.iterdir()) if p.is_file()]
    classes = sorted(str(ds.SOPClassUID) for ds in received)
    assert classes.count(SEG) == 1, classes
    assert classes.count(COMPREHENSIVE_3D_SR) >= 2, classes
    ct_study = str(dcmread(next((test_data / "ct" / "totalseg_dicom").glob("*.dcm"))).StudyInstanceUID)
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
