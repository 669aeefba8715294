"""With the shipped configuration and no routes of our own, a radiograph whose only chest clue is its
Study Description ("CHEST PA"; DX, no body part, ViewPosition PA) is analysed and its SR delivered.

Real processes: ``dicom-node serve`` and ``dicom-node worker`` on Redis, DCMTK ``storescu`` as the
modality and ``storescp`` as the PACS. The models folder starts empty and gets scaffold weights (the exact
published architecture, untrained: this proves routing and plumbing, never the findings' value).
"""

from __future__ import annotations

import subprocess

import pytest
from pydicom import dcmread

from dicom_node.index.models import Delivery, DeliveryState, Job, JobState, Study
from models.installer import import_weights, scaffold
from tests.conftest import CXR
from tests.factories import write_description_only_radiograph
from tests.jobs.conftest import wait_for

pytestmark = pytest.mark.slow

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def test_description_only_radiograph_is_routed_by_the_shipped_defaults(
    tmp_path, redis_db, pacs, node_factory
):
    models_dir = tmp_path / "models"
    models_dir.mkdir()  # empty: the manifests come with the package
    import_weights(scaffold("txrv-densenet121-res224-all", tmp_path / "txrv.pt"), models_dir)
    radiograph = write_description_only_radiograph(tmp_path / "dx" / "chest_pa.dcm", CXR)
    assert "BodyPartExamined" not in dcmread(radiograph) and dcmread(radiograph).ViewPosition == "PA"

    pacs.start()
    node = node_factory(task_time_limit=300, running_lease=60)
    shipped = node.config.read_text().split("[[routes]]")[0]  # the fixture's own route removed
    # Scaffold weights run only when allowed, and are then marked UNTRAINED (tests/jobs/test_untrained.py).
    node.config.write_text(shipped + "[analysis]\nallow_untrained = true\n")
    assert "[[routes]]" not in node.config.read_text()
    node.serve()
    node._start(["worker", "--concurrency", "1"], "worker.log", DICOM_NODE_MODELS_DIR=str(models_dir))
    result = subprocess.run(
        ["storescu", "-aet", "MODALITY", "-aec", "NODE", "-xy", "127.0.0.1", str(node.port), str(radiograph)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr

    def finished() -> list[Job] | None:
        jobs = node.rows(Job)
        return (
            jobs if jobs and all(j.state not in (JobState.QUEUED, JobState.RUNNING) for j in jobs) else None
        )

    jobs = wait_for(finished, 300, "the radiograph's job to finish")
    assert [(j.pipeline, j.state) for j in jobs] == [("cxr-classification", JobState.SUCCEEDED)], (
        [(j.pipeline, j.state, j.error) for j in jobs],
        node.log("worker.log"),
    )
    assert jobs[0].model_version.startswith("scaffold-")
    (study,) = node.rows(Study)
    assert study.study_description == "CHEST PA" and study.routing_reason is None
    wait_for(
        lambda: (d := node.rows(Delivery)) and all(x.state == DeliveryState.DELIVERED for x in d),
        120,
        "the delivery",
    )
    received = [dcmread(p) for p in sorted(pacs.folder.iterdir()) if p.is_file()]
    assert [str(ds.SOPClassUID) for ds in received].count(COMPREHENSIVE_3D_SR) >= 1
    assert {str(ds.StudyInstanceUID) for ds in received} == {study.study_instance_uid}

    explained = node.cli("route", "--json", study.study_instance_uid)
    assert explained.returncode == 0, explained.stderr
    assert '"pipeline": "cxr-classification"' in explained.stdout
