"""``dicom-node reprocess`` on a study that has results: one new job per call, at the study's current
revision, on the received series the route chooses (not the node's own SR, not a localizer), and never
touching a job that is running.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from dicom_node.index.models import Delivery, DeliveryState, Job, JobState, Series, Study, StudyState
from dicom_node.jobs.reprocess import received_series
from tests.jobs.conftest import make_ct_study, wait_for
from tests.jobs.fixed_pipeline import result_uids


def _add_localizer(folder: Path, axial: list[Path]) -> list[Path]:
    """A localizer series in the same study: thinner than the axial one, so "thinnest" alone would take it."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    paths = []
    for index, source in enumerate(axial):
        ds = dcmread(source)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID, ds.SeriesNumber = series_uid, 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.SliceThickness = 0.5
        path = folder / f"{index}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


class Index:
    def __init__(self, node) -> None:
        self.node = node

    def query(self, function):
        database = self.node.database()
        try:
            with database.sessions() as session:
                return function(session)
        finally:
            database.dispose()

    def jobs(self) -> list[Job]:
        return self.query(lambda s: list(s.scalars(select(Job).order_by(Job.id)).all()))

    def state(self, job_id: int) -> str:
        return self.query(lambda s: s.get(Job, job_id).state)

    def study(self) -> Study:
        return self.query(lambda s: s.scalar(select(Study)))

    def series_uid(self, series_id: int) -> str:
        return self.query(lambda s: s.get(Series, series_id).series_instance_uid)

    def settled(self) -> bool:
        """Complete, routed at its current revision, and quiet (results stored into it re-open it)."""
        study = self.study()
        quiet = study is not None and time.time() - study.last_received_at.timestamp() > 2.5
        return bool(quiet and study.state == StudyState.COMPLETE and study.routed_revision == study.revision)

    def delivered(self, count: int) -> bool:
        deliveries = self.query(lambda s: list(s.scalars(select(Delivery)).all()))
        return len(deliveries) == count and all(d.state == DeliveryState.DELIVERED for d in deliveries)


def _said(result) -> str:
    return " ".join((result.stdout + result.stderr).split())


def test_reprocess_creates_one_job_at_the_current_revision_on_the_received_series(
    tmp_path, redis_db, pacs, node_factory
):
    pacs.start()
    node = node_factory()
    node.serve()
    node.worker(pipeline_seconds=3)
    study_uid, axial = make_ct_study(tmp_path / "axial")
    localizer = _add_localizer(tmp_path / "localizer", axial)
    node.send(localizer + axial)
    index = Index(node)
    axial_uid = str(dcmread(axial[0]).SeriesInstanceUID)
    sr_series_uid, sr_uid = result_uids(study_uid)

    wait_for(lambda: index.delivered(1), 60, f"the first results\n{node.log('worker.log')}")
    wait_for(index.settled, 30, "the study to settle with its results stored in it")
    (first,) = index.jobs()
    assert index.series_uid(first.series_id) == axial_uid
    # The node's SR is a series of the study now, but not a received one.
    received = index.query(
        lambda s: [x.series_instance_uid for x in received_series(s, s.scalar(select(Study)), "NODE")]
    )
    assert sr_series_uid not in received and set(received) == {
        axial_uid,
        str(dcmread(localizer[0]).SeriesInstanceUID),
    }

    for args in (["reprocess", study_uid], ["reprocess", study_uid, "--pipeline", "fixed-cost"]):
        before = index.jobs()
        result = node.cli(*args)
        assert result.returncode == 0, _said(result)
        jobs = index.jobs()
        assert len(jobs) == len(before) + 1, _said(result)  # one new job, nothing else touched
        new = jobs[-1]
        assert [(j.id, j.state, j.attempts) for j in jobs[:-1]] == [
            (j.id, j.state, j.attempts) for j in before
        ]
        assert new.study_revision == index.study().revision  # the current revision
        # The received axial series: neither the node's SR series nor the (thinner) localizer.
        assert index.series_uid(new.series_id) == axial_uid
        assert f"queued job {new.id}" in _said(result)

        wait_for(lambda job_id=new.id: index.state(job_id) == JobState.RUNNING, 30, "the new job to run")
        running = next(j for j in index.jobs() if j.id == new.id)
        refused = node.cli("reprocess", study_uid)
        assert refused.returncode == 1, _said(refused)
        assert f"job {new.id} (fixed-cost) is running" in _said(refused) and "not touched" in _said(refused)
        after = next(j for j in index.jobs() if j.id == new.id)
        assert (after.state, after.claim_token, after.attempts) == (JobState.RUNNING, running.claim_token, 1)
        assert len(index.jobs()) == len(jobs)

        count = len(jobs)
        wait_for(lambda n=count: index.delivered(n), 60, f"the new job's delivery\n{node.log('worker.log')}")
        assert next(j for j in index.jobs() if j.id == new.id).state == JobState.SUCCEEDED
        wait_for(index.settled, 30, "the study to settle again")

    # Each run delivered its results again, and only those.
    assert Counter(pacs.received()) == Counter({sr_uid: 3})


def test_reprocess_refuses_what_it_cannot_do(tmp_path, redis_db, pacs, node_factory):
    node = node_factory()
    node.data_dir.mkdir(parents=True)
    node.database().upgrade()
    unknown = node.cli("reprocess", "1.2.3.4")
    assert unknown.returncode == 1 and "no study 1.2.3.4" in _said(unknown)
    no_such_pipeline = node.cli("reprocess", "1.2.3.4", "--pipeline", "nonsense")
    assert no_such_pipeline.returncode == 1 and "unknown pipeline 'nonsense'" in _said(no_such_pipeline)
