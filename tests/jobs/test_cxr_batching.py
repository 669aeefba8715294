"""Radiograph jobs queued together run as one batch in a real worker, each still its own job.

A real node (``dicom-node serve`` without workers) receives four radiograph studies from DCMTK storescu:
three frontal copies of the shared radiograph (each its own study) and one lateral, which the route
accepts but the pipeline refuses. Only then does a real ``dicom-node worker`` start, with the real
radiograph pipeline on scaffold weights (``allow_untrained``): the first job it takes claims the other
three into one ``run_batch``. Each job must end on its own: the frontal ones succeed and are delivered
to storescp with their SR, the lateral one fails with the pipeline's reason and delivers nothing; the
task messages of the jobs taken along find them finished and do nothing.
(``run_batch`` giving what ``run`` gives on each image alone: tests/pipelines/test_cxr_batch.py.)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from dicom_node.index.models import Delivery, DeliveryState, Job, JobState
from dicom_node.reports.readback import read_classification
from tests.jobs.conftest import NodeUnderTest, Pacs, wait_for

pytestmark = pytest.mark.slow

MODEL = "txrv-densenet121-res224-all"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
NOTHING_TO_DO = "nothing to do (finished, or another worker holds it)"

ROUTES = """
[[routes]]
pipeline = "cxr-classification"
select = "first"
[routes.match]
modality = ["CR", "DX"]

[analysis]
allow_untrained = true
batch_size = {batch_size}
"""


def _install(models_dir: Path, work: Path) -> None:
    from models.installer import import_weights, scaffold

    repo_models = Path(__file__).resolve().parents[2] / "models"
    shutil.copytree(repo_models / MODEL / "configs", models_dir / MODEL / "configs")
    import_weights(scaffold(MODEL, work / f"{MODEL}.pt"), models_dir, model=MODEL)


def _studies(radiograph: Path, folder: Path) -> dict[str, str]:
    """Four single-image studies from the shared radiograph; study UID → its view position."""
    folder.mkdir()
    views: dict[str, str] = {}
    for n, view in enumerate(("PA", "PA", "LL", "PA")):
        ds = dcmread(radiograph)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.AccessionNumber, ds.ViewPosition = f"BATCH{n}", view
        ds.save_as(folder / f"cxr{n}.dcm", enforce_file_format=True)
        views[str(ds.StudyInstanceUID)] = view
    return views


def _run(
    tmp_path: Path, pacs: Pacs, node_factory: object, test_data: Path, batch_size: int
) -> tuple[NodeUnderTest, dict[str, Job], dict[str, str]]:
    models_dir = tmp_path / "models"
    _install(models_dir, tmp_path)
    pacs.start()
    node: NodeUnderTest = node_factory(task_time_limit=300, running_lease=60)  # type: ignore[operator]
    before_routes = node.config.read_text().split("[[routes]]")[0]
    node.config.write_text(
        f'models_dir = "{models_dir}"\n' + before_routes + ROUTES.format(batch_size=batch_size)
    )
    node.serve()
    views = _studies(test_data / "cxr" / "txrv_siim_cxr_sc_jpeg.dcm", tmp_path / "studies")
    node.send([tmp_path / "studies"], options=("-xy", "+sd"), timeout=120)
    wait_for(
        lambda: len(jobs := node.rows(Job)) == 4 and all(j.state == JobState.QUEUED for j in jobs),
        60,
        "four queued radiograph jobs",
    )
    node._start(["worker", "--concurrency", "1"], "worker.log", DICOM_NODE_MODELS_DIR=str(models_dir))

    def finished() -> bool:
        return all(j.state not in (JobState.QUEUED, JobState.RUNNING) for j in node.rows(Job))

    wait_for(finished, 300, "the four jobs to finish")
    by_study = {j.study.study_instance_uid: j for j in _jobs_with_studies(node)}
    return node, by_study, views


def _jobs_with_studies(node: NodeUnderTest) -> list[Job]:
    database = node.database()
    try:
        with database.sessions() as session:
            jobs = list(session.query(Job).order_by(Job.id))
            for job in jobs:
                _ = job.study.study_instance_uid  # loaded while the session is open
            return jobs
    finally:
        database.dispose()


def _delivered_scores(node: NodeUnderTest, pacs: Pacs, frontal: int) -> dict[str, dict[str, float]]:
    wait_for(
        lambda: (
            len(d := node.rows(Delivery)) == frontal and all(x.state == DeliveryState.DELIVERED for x in d)
        ),
        120,
        "a delivery per frontal radiograph",
    )
    received = [dcmread(p) for p in sorted(pacs.folder.iterdir()) if p.is_file()]
    reports = [ds for ds in received if str(ds.SOPClassUID) == COMPREHENSIVE_3D_SR]
    return {str(ds.StudyInstanceUID): {f.label: f.score for f in read_classification(ds)} for ds in reports}


def test_queued_radiographs_run_as_one_batch_and_end_each_on_their_own(
    tmp_path, redis_db, pacs, node_factory, test_data
):
    node, jobs, views = _run(tmp_path, pacs, node_factory, test_data, batch_size=8)
    log = (node.root / "worker.log").read_text(errors="replace")  # whole: node.log keeps the tail
    assert "4 cxr-classification jobs in one batch" in log, log
    for study, view in views.items():
        job = jobs[study]
        if view == "LL":
            assert job.state == JobState.FAILED, (job.state, job.error)
            assert "view position is LL" in (job.error or ""), job.error
        else:
            assert job.state == JobState.SUCCEEDED, (job.state, job.error, log)
            assert (job.model_version or "").startswith("scaffold-")
    scores = _delivered_scores(node, pacs, frontal=3)
    assert set(scores) == {s for s, v in views.items() if v != "LL"}
    # the same image in each frontal study: the batch gives each the same scores
    first, *others = scores.values()
    assert first and all(other == pytest.approx(first, abs=1e-5) for other in others)
    # the task messages of the three jobs taken along come later and find them finished
    wait_for(
        lambda: (node.root / "worker.log").read_text(errors="replace").count(NOTHING_TO_DO) == 3,
        60,
        "the three later task messages to do nothing",
    )
