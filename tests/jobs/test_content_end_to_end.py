"""With the shipped configuration: content checks decide on the pixels, in the worker, before a pipeline.

Real processes: ``dicom-node serve`` and ``dicom-node worker`` on Redis, DCMTK ``storescu`` as the
modality and ``storescp`` as the PACS; ``jobs`` and ``route --explain`` run as subprocesses. The vertebra
model has scaffold weights (the published architecture, untrained: plumbing, never findings) and the
nodule model none, so a nodule job could only end skipped; the content check runs first and says why.

- The shared CT (Siemens, PARTIALBODY, lower thorax): routed to both CT pipelines by geometry; its spine
  check passes and the vertebra pipeline runs; its lung check measures the lung bases (about 50 ml of air
  inside the body, under 100 ml) and the nodule job ends skipped with that figure.
- A generated head CT with no tags at all (so geometry alone routes it): both jobs end skipped, "no lung
  in field of view" and "no spine in field of view", with the figures in ``jobs`` and ``route --explain``.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from pydicom import dcmread

from dicom_node.index.models import Job, JobState
from models.installer import import_weights, scaffold
from tests import phantoms
from tests.conftest import CT_DIR
from tests.factories import UNTAGGED_CT, write_ct_series
from tests.jobs.conftest import CLI, wait_for

pytestmark = pytest.mark.slow


def test_content_checks_decide_which_pipelines_run(tmp_path, redis_db, pacs, node_factory):
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    name = "monai-wholebody-ct-segmentation"
    import_weights(scaffold(name, tmp_path / f"{name}.pt"), models_dir, model=name)
    head = write_ct_series(
        tmp_path / "head",
        64,
        rows=200,
        columns=200,
        spacing=2.0,
        thickness=2.5,
        headers=UNTAGGED_CT,
        phantom=phantoms.head,
    )
    head_uid = str(dcmread(head[0], stop_before_pixels=True).StudyInstanceUID)
    ct = sorted(CT_DIR.glob("*.dcm"))
    ct_uid = str(dcmread(ct[0], stop_before_pixels=True).StudyInstanceUID)

    pacs.start()
    node = node_factory(task_time_limit=1800, running_lease=300)  # the vertebra model on CPU
    shipped = node.config.read_text().split("[[routes]]")[0]  # the fixture's own routes removed
    node.config.write_text(shipped + "[analysis]\nallow_untrained = true\n")
    node.serve()
    node._start(["worker", "--concurrency", "1"], "worker.log", DICOM_NODE_MODELS_DIR=str(models_dir))
    node.send(ct, options=("-xv",), timeout=120)
    node.send(head, options=("-xv",), timeout=120)

    def finished() -> dict[tuple[str, str], Job] | None:
        jobs = node.rows(Job)
        if len(jobs) < 4 or any(j.state in (JobState.QUEUED, JobState.RUNNING) for j in jobs):
            return None
        database = node.database()
        try:
            with database.sessions() as session:
                return {(session.get(Job, j.id).study.study_instance_uid, j.pipeline): j for j in jobs}
        finally:
            database.dispose()

    jobs = wait_for(finished, 1800, "the four jobs to finish")
    log = node.log("worker.log")
    states = {key: (j.state, j.error) for key, j in jobs.items()}
    assert set(states) == {(u, p) for u in (ct_uid, head_uid) for p in ("ct-lung-nodules", "ct-vertebrae")}
    # The shared CT: vertebrae analysed; nodules skipped with the measured lung volume.
    assert states[(ct_uid, "ct-vertebrae")] == (JobState.SUCCEEDED, None), log
    spine = json.loads(jobs[(ct_uid, "ct-vertebrae")].content_checks)["checks"]["spine"]
    assert spine["passed"] and spine["figures"]["slices_with_vertebra"] == 8
    state, error = states[(ct_uid, "ct-lung-nodules")]
    lungs = json.loads(jobs[(ct_uid, "ct-lung-nodules")].content_checks)["checks"]["lungs"]
    assert state == JobState.SKIPPED and 30 <= lungs["figures"]["air_ml"] < 100, (state, error, log)
    assert error == lungs["reason"] and error.startswith("too little lung in field of view: "), error
    # The head CT: neither pipeline runs, each skipped with what was measured.
    state, error = states[(head_uid, "ct-lung-nodules")]
    assert state == JobState.SKIPPED and error.startswith("no lung in field of view: "), (state, error)
    assert error.endswith("ml of air inside the body (needs 100 ml)")
    state, error = states[(head_uid, "ct-vertebrae")]
    assert state == JobState.SKIPPED, (state, error)
    assert error.startswith("no spine in field of view: a vertebra-sized bone blob"), error

    listed = node.cli("jobs", "--study", head_uid, "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {r["pipeline"]: r for r in json.loads(listed.stdout)["jobs"]}
    assert rows["ct-lung-nodules"]["state"] == "skipped"
    assert rows["ct-lung-nodules"]["requires"] == ["lungs"]
    assert rows["ct-lung-nodules"]["content_checks"]["checks"]["lungs"]["passed"] is False
    table = subprocess.run(
        [*CLI, "jobs", "--study", head_uid],
        cwd=node.root,
        env={**node.env(), "COLUMNS": "300"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert table.returncode == 0, table.stderr
    assert "no lung in field of view: " in table.stdout and "lungs " in table.stdout

    explained = subprocess.run(
        [*CLI, "route", "--explain", head_uid],
        cwd=node.root,
        env={**node.env(), "COLUMNS": "300"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert explained.returncode == 0, explained.stderr
    job_id = jobs[(head_uid, "ct-lung-nodules")].id
    assert f"content check lungs (job {job_id}): FAIL, no lung in field of view: " in explained.stdout
    assert (
        "content check spine (job " in explained.stdout
        and "FAIL, no spine in field of view" in explained.stdout
    )
