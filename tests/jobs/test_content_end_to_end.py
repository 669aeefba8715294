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

The node run is the session's ``shipped_ct_run`` (tests/jobs/shipped_ct.py), which test_multiframe.py
reads too: the vertebra network runs once per series sent.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from dicom_node.index.models import Job, JobState, Study
from tests.jobs.conftest import CLI
from tests.jobs.shipped_ct import TIMEOUT, XDIST_GROUP

pytestmark = pytest.mark.slow


@pytest.mark.xdist_group(XDIST_GROUP)
@pytest.mark.timeout(TIMEOUT)  # the shared run: three vertebra runs on CPU, one after the other
def test_content_checks_decide_which_pipelines_run(shipped_ct_run):
    node, ct_uid, head_uid = shipped_ct_run.node, shipped_ct_run.ct_study, shipped_ct_run.head_study
    # This test's studies: the shared CT and the head CT (the run also holds the multi-frame forms).
    studies = {study.id: study.study_instance_uid for study in node.rows(Study)}
    jobs = {
        (studies[j.study_id], j.pipeline): j
        for j in node.rows(Job)
        if studies[j.study_id] in (ct_uid, head_uid)
    }
    assert all(j.state not in (JobState.QUEUED, JobState.RUNNING) for j in jobs.values())
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
