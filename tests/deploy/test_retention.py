"""Retention never deletes anything undelivered: index states built through the ORM, real files in a store.

Every database case runs over SQLite and PostgreSQL (``database_url``). The decision itself
(``judge_study``) is also checked as a property over random job/delivery states and ages.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from typer.testing import CliRunner

from dicom_node.index.database import Database
from dicom_node.index.models import (
    Delivery,
    DeliveryState,
    Instance,
    Job,
    JobState,
    Result,
    Series,
    Study,
    StudyRetention,
    StudyState,
)
from dicom_node.storage.retention import (
    DeliveryFacts,
    JobFacts,
    RetentionPolicy,
    StudyFacts,
    acknowledge_failures,
    apply_retention,
    judge_study,
    review,
)

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
POLICY = RetentionPolicy(days=30)
OLD = NOW - timedelta(days=45)
YOUNG = NOW - timedelta(days=3)

_counter = iter(range(1, 1_000_000))


def _uid() -> str:
    return f"1.2.826.0.1.3680043.10.9999.{next(_counter)}"


class Index:
    """An index database plus a store folder, with a builder for studies in any state."""

    def __init__(self, url: str, root: Path) -> None:
        self.database = Database(url)
        self.database.upgrade()
        self.store = root / "store"
        self.store.mkdir()

    def _instance(self, series: Series, content: bytes, when: datetime) -> Instance:
        sop = _uid()
        relative = f"{series.study.study_instance_uid}/{series.series_instance_uid}/{sop}.dcm"
        path = self.store / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return Instance(
            series=series,
            sop_instance_uid=sop,
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            path=relative,
            size=len(content),
            sha256="0" * 64,
            received_at=when,
        )

    def study(
        self,
        jobs: list[tuple[str, list[str]]],
        *,
        when: datetime = OLD,
        state: str = StudyState.COMPLETE,
        routed: bool = True,
        images: int = 3,
    ) -> int:
        """A study received at ``when`` with ``images`` source files and one job per ``(state, deliveries)``.

        Succeeded jobs get a stored result object (file, Instance row and Result row), as the worker does.
        """
        with self.database.session() as session:
            study = Study(
                study_instance_uid=_uid(),
                state=state,
                revision=1,
                routed_revision=1 if routed else 0,
                modalities="CT",
                first_received_at=when,
                last_received_at=when,
                completed_at=when if state == StudyState.COMPLETE else None,
                num_series=1,
                num_instances=images,
                total_bytes=images * 100,
            )
            series = Series(study=study, series_instance_uid=_uid(), modality="CT", num_instances=images)
            session.add_all([study, series])
            for _ in range(images):
                session.add(self._instance(series, b"image" * 20, when))
            for index, (job_state, deliveries) in enumerate(jobs):
                job = Job(
                    study=study,
                    series=series,
                    study_revision=1,
                    pipeline=f"pipeline-{index}",
                    state=job_state,
                    created_at=when,
                    finished_at=when if job_state not in (JobState.QUEUED, JobState.RUNNING) else None,
                )
                session.add(job)
                if job_state == JobState.SUCCEEDED:
                    result_series = Series(study=study, series_instance_uid=_uid(), modality="SR")
                    result = self._instance(result_series, b"result" * 10, when)
                    session.add_all([result_series, result])
                    session.add(
                        Result(
                            job=job,
                            sop_instance_uid=result.sop_instance_uid,
                            sop_class_uid="1.2.840.10008.5.1.4.1.1.88.22",
                            series_instance_uid=result_series.series_instance_uid,
                            path=result.path,
                        )
                    )
                for number, delivery_state in enumerate(deliveries):
                    session.add(
                        Delivery(
                            job=job,
                            destination=f"pacs-{number}",
                            ae_title="PACS",
                            host="127.0.0.1",
                            port=104,
                            state=delivery_state,
                            failures=1 if delivery_state != DeliveryState.DELIVERED else 0,
                            next_attempt_at=NOW if delivery_state == DeliveryState.PENDING else None,
                            delivered_at=when if delivery_state == DeliveryState.DELIVERED else None,
                        )
                    )
            session.flush()
            return study.id

    def files(self, study_id: int) -> dict[str, bool]:
        """Every indexed instance path of the study → whether it is a result object."""
        with self.database.sessions() as session:
            results = set(session.scalars(select(Result.path)))
            paths = session.scalars(
                select(Instance.path).join(Series).where(Series.study_id == study_id)
            ).all()
            return {p: p in results for p in paths}

    def files_on_disk(self) -> set[str]:
        return {
            str(p.relative_to(self.store)) for p in self.store.rglob("*.dcm") if ".superseded" not in p.parts
        }


@pytest.fixture
def index(database_url: str, tmp_path: Path):
    built = Index(database_url, tmp_path)
    try:
        yield built
    finally:
        built.database.dispose()


D = DeliveryState
J = JobState

KEPT = [
    pytest.param([(J.QUEUED, [])], OLD, id="queued-job"),
    pytest.param([(J.RUNNING, [])], OLD, id="running-job"),
    pytest.param([(J.SUCCEEDED, [D.PENDING])], OLD, id="pending-delivery"),
    pytest.param([(J.SUCCEEDED, [D.SENDING])], OLD, id="sending-delivery"),
    pytest.param([(J.SUCCEEDED, [D.DELIVERED, D.PENDING])], OLD, id="one-of-two-deliveries-awaiting-retry"),
    pytest.param([(J.SUCCEEDED, [D.FAILED])], OLD, id="failed-delivery-awaiting-retry"),
    pytest.param([(J.FAILED, [])], OLD, id="failed-job"),
    pytest.param([(J.SUCCEEDED, [D.DELIVERED]), (J.QUEUED, [])], OLD, id="second-job-queued"),
    pytest.param([(J.SUCCEEDED, [D.DELIVERED])], YOUNG, id="delivered-but-young"),
    pytest.param([], YOUNG, id="routed-to-nothing-but-young"),
]


@pytest.mark.parametrize(("jobs", "when"), KEPT)
def test_undelivered_or_young_studies_are_never_deleted(index: Index, jobs, when) -> None:
    study_id = index.study(jobs, when=when)
    before, on_disk = index.files(study_id), index.files_on_disk()

    verdict = next(v for v in review(index.database, POLICY, NOW) if v.study_id == study_id)
    assert not verdict.deletable
    report = apply_retention(index.database, index.store, POLICY, NOW)
    # Even when asked for this study by id, the locked re-check refuses.
    forced = apply_retention(index.database, index.store, POLICY, NOW, [study_id])

    assert report.studies == [] and forced.studies == []
    assert index.files(study_id) == before
    assert index.files_on_disk() == on_disk


@pytest.mark.parametrize(
    "state", [StudyState.RECEIVING, StudyState.UPDATED], ids=["receiving", "updated-after-routing"]
)
def test_studies_still_receiving_are_kept(index: Index, state: str) -> None:
    study_id = index.study([(J.SUCCEEDED, [D.DELIVERED])], state=state)
    before = index.files(study_id)
    assert apply_retention(index.database, index.store, POLICY, NOW).studies == []
    assert index.files(study_id) == before


def test_unrouted_study_is_kept(index: Index) -> None:
    study_id = index.study([], routed=False)
    assert apply_retention(index.database, index.store, POLICY, NOW).studies == []
    assert len(index.files(study_id)) == 3


@pytest.mark.parametrize(
    "jobs",
    [
        pytest.param([(J.SUCCEEDED, [D.DELIVERED])], id="delivered"),
        pytest.param([(J.SUCCEEDED, [D.DELIVERED, D.DELIVERED]), (J.SKIPPED, [])], id="two-destinations"),
        pytest.param([(J.SKIPPED, [])], id="skipped-model-not-installed"),
        pytest.param([], id="routing-matched-nothing"),
    ],
)
def test_delivered_and_old_studies_lose_their_images_and_keep_their_results(index: Index, jobs) -> None:
    study_id = index.study(jobs)
    keep = index.study([(J.RUNNING, [])])  # a neighbour that must not be touched
    before, neighbour = index.files(study_id), index.files(keep)
    results = {p for p, is_result in before.items() if is_result}

    report = apply_retention(index.database, index.store, POLICY, NOW)

    assert report.instances == 3 and report.files_missing == 0
    assert index.files(study_id) == {p: True for p in results}
    assert index.files_on_disk() >= results
    assert not any(p in index.files_on_disk() for p, is_result in before.items() if not is_result)
    assert index.files(keep) == neighbour
    with index.database.sessions() as session:
        record = session.scalar(select(StudyRetention).where(StudyRetention.study_id == study_id))
        assert record is not None and record.purged_revision == 1 and record.purged_instances == 3
        assert len(session.scalars(select(Result)).all()) == sum(1 for s, _ in jobs if s == J.SUCCEEDED)
        assert session.get(Study, study_id) is not None  # the study stays listed
    # A second run finds nothing more to do.
    again = apply_retention(index.database, index.store, POLICY, NOW)
    assert again.studies == []


def test_retention_off_deletes_nothing(index: Index) -> None:
    study_id = index.study([(J.SUCCEEDED, [D.DELIVERED])])
    off = RetentionPolicy(days=0)
    assert apply_retention(index.database, index.store, off, NOW).studies == []
    assert all(not v.deletable for v in review(index.database, off, NOW))
    assert len(index.files(study_id)) == 4


def test_acknowledged_failures_become_deletable(index: Index) -> None:
    study_id = index.study([(J.FAILED, []), (J.SUCCEEDED, [D.FAILED])])
    assert apply_retention(index.database, index.store, POLICY, NOW).studies == []
    with index.database.sessions() as session:
        uid = session.get(Study, study_id).study_instance_uid  # type: ignore[union-attr]
    acknowledge_failures(index.database, uid, NOW)
    assert apply_retention(index.database, index.store, POLICY, NOW).studies == [uid]
    assert all(index.files(study_id).values())  # only the result object is left


def test_acknowledgement_never_covers_active_work(index: Index) -> None:
    study_id = index.study([(J.FAILED, []), (J.SUCCEEDED, [D.PENDING])])
    with index.database.sessions() as session:
        uid = session.get(Study, study_id).study_instance_uid  # type: ignore[union-attr]
    acknowledge_failures(index.database, uid, NOW)
    assert apply_retention(index.database, index.store, POLICY, NOW).studies == []
    assert len(index.files(study_id)) == 4


def test_missing_files_are_tolerated_and_counted(index: Index) -> None:
    study_id = index.study([(J.SUCCEEDED, [D.DELIVERED])])
    source = next(p for p, is_result in index.files(study_id).items() if not is_result)
    (index.store / source).unlink()
    report = apply_retention(index.database, index.store, POLICY, NOW)
    assert report.instances == 3 and report.files_missing == 1


def test_cli_dry_run_changes_nothing_and_apply_deletes(index: Index, monkeypatch, tmp_path: Path) -> None:
    from dicom_node.cli.app import app

    delivered = index.study([(J.SUCCEEDED, [D.DELIVERED])], when=datetime.now(UTC) - timedelta(days=40))
    pending = index.study([(J.SUCCEEDED, [D.PENDING])], when=datetime.now(UTC) - timedelta(days=40))
    monkeypatch.setenv("DICOM_NODE_DATABASE_URL", index.database.url)
    monkeypatch.setenv("DICOM_NODE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DICOM_NODE_RETENTION_DAYS", "30")
    monkeypatch.delenv("DICOM_NODE_CONFIG", raising=False)
    runner = CliRunner()

    dry = runner.invoke(app, ["retention", "--json"])
    assert dry.exit_code == 0, dry.output
    document = json.loads(dry.stdout)
    assert document["mode"] == "dry-run" and document["retention_days"] == 30
    assert [s["deletable"] for s in document["studies"]] == [True, False]
    assert "delivery" in document["studies"][1]["reason"]
    assert "deleted" not in document
    assert len(index.files(delivered)) == 4

    applied = runner.invoke(app, ["retention", "--apply", "--json"])
    assert applied.exit_code == 0, applied.output
    deleted = json.loads(applied.stdout)["deleted"]
    assert deleted["instances"] == 3 and len(deleted["studies"]) == 1
    assert len(index.files(delivered)) == 1 and len(index.files(pending)) == 4

    bad = runner.invoke(app, ["retention", "--days", "-1"])
    assert bad.exit_code == 2


# The decision as a property: whatever the states and ages, "deletable" implies delivered and old.

job_states = st.sampled_from(list(JobState))
delivery_states = st.sampled_from(list(DeliveryState))


@st.composite
def study_facts(draw: st.DrawFn) -> StudyFacts:
    age = timedelta(days=draw(st.floats(min_value=0, max_value=90)))
    when = NOW - age
    jobs = []
    deliveries = []
    for job_id in range(draw(st.integers(0, 3))):
        state = draw(job_states)
        jobs.append(JobFacts(job_id, draw(st.integers(0, 2)), state, when))
        for delivery_id in range(draw(st.integers(0, 2))):
            d_state = draw(delivery_states)
            deliveries.append(DeliveryFacts(job_id * 10 + delivery_id, job_id, d_state, when))
    return StudyFacts(
        study_id=1,
        study_instance_uid="1.2.3",
        state=draw(st.sampled_from(list(StudyState))),
        revision=2,
        routed_revision=draw(st.sampled_from([1, 2])),
        last_received_at=when,
        completed_at=when,
        jobs=tuple(jobs),
        deliveries=tuple(deliveries),
        acknowledged_revision=draw(st.sampled_from([None, 1, 2])),
        source_instances=draw(st.integers(0, 5)),
    )


@settings(max_examples=500, deadline=None)
@given(facts=study_facts(), days=st.sampled_from([0, 0.5, 30]))
def test_deletable_implies_nothing_pending_and_old_enough(facts: StudyFacts, days: float) -> None:
    policy = RetentionPolicy(days=days)
    verdict = judge_study(facts, policy, NOW)
    if not verdict.deletable:
        return
    assert policy.enabled
    assert facts.state == StudyState.COMPLETE and facts.routed_revision == facts.revision
    assert all(j.state not in (J.QUEUED, J.RUNNING) for j in facts.jobs)
    assert all(d.state not in (D.PENDING, D.SENDING) for d in facts.deliveries)
    if facts.acknowledged_revision != facts.revision:
        assert all(j.state != J.FAILED for j in facts.jobs)
        assert all(d.state == D.DELIVERED for d in facts.deliveries)
    assert NOW - facts.last_received_at >= policy.keep_for
    assert verdict.delete_after is not None and verdict.delete_after <= NOW
