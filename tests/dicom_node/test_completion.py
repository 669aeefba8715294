"""Completion before the quiet period: MPPS N-CREATE/N-SET from a pynetdicom SCU, association release
with DCMTK storescu (and a late instance re-opening the study), and the quiet period kept otherwise."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep  # type: ignore[attr-defined]
from sqlalchemy import select

from dicom_node.config import RouteSpec
from dicom_node.index.database import Database
from dicom_node.index.models import MppsState, PerformedProcedureStep, Study
from tests.conftest import require_tool
from tests.factories import nodelay, write_ct_series
from tests.serving import CT, EXPLICIT


def _route(complete_on: str, pipeline: str = "ct-lung-nodules") -> RouteSpec:
    return RouteSpec.model_validate(
        {"pipeline": pipeline, "match": {"modality": "CT"}, "complete_on": complete_on}
    )


def _study(database: Database, study_uid: str) -> Study | None:
    with database.sessions() as session:
        return session.scalar(select(Study).where(Study.study_instance_uid == study_uid))


def _wait_state(database: Database, study_uid: str, state: str, timeout: float, revision: int = 1) -> float:
    """Seconds until the study is ``state`` (at ``revision`` when complete)."""
    start = time.monotonic()
    while True:
        study = _study(database, study_uid)
        if study is not None and study.state == state and (state != "complete" or study.revision == revision):
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            pytest.fail(f"study is {study.state if study else None}, not {state} (revision {revision})")
        time.sleep(0.02)


def _steady(database: Database, study_uid: str, state: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        study = _study(database, study_uid)
        assert study is not None and study.state == state
        time.sleep(0.05)


def storescu(port: int, *files: Path) -> None:
    result = subprocess.run(
        [
            require_tool("storescu"),
            "-aet",
            "MODALITY",
            "-aec",
            "DICOMNODE",
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# --- MPPS ---------------------------------------------------------------------------------------


def _mpps_scu(port: int):
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    ae.add_requested_context(CT, EXPLICIT)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    assert assoc.is_established
    nodelay(assoc)
    return assoc


def _in_progress(study_uid: str) -> Dataset:
    ds = Dataset()
    step = Dataset()
    step.StudyInstanceUID = study_uid
    step.AccessionNumber = "A1"
    ds.ScheduledStepAttributesSequence = [step]
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepID = "PPS1"
    ds.Modality = "CT"
    ds.PerformedSeriesSequence = []
    return ds


def _completed(paths: list[Path], status: str = "COMPLETED") -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    series = Dataset()
    first = dcmread(paths[0], stop_before_pixels=True)
    series.SeriesInstanceUID = first.SeriesInstanceUID
    images = []
    for path in paths:
        source = dcmread(path, stop_before_pixels=True)
        image = Dataset()
        image.ReferencedSOPClassUID = source.SOPClassUID
        image.ReferencedSOPInstanceUID = source.SOPInstanceUID
        images.append(image)
    series.ReferencedImageSequence = images
    ds.PerformedSeriesSequence = [series]
    return ds


def test_mpps_completed_completes_the_study_once_every_listed_instance_is_present(
    make_settings, run_node, database_url, tmp_path
):
    node = run_node(make_settings(quiet_period=3600.0, routes=(_route("mpps"),), database_url=database_url))
    paths = write_ct_series(tmp_path / "ct", 3, rows=32, columns=32)
    study_uid = str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    mpps_uid = generate_uid()
    assoc = _mpps_scu(node.address[1])
    try:
        status, _ = assoc.send_n_create(_in_progress(study_uid), ModalityPerformedProcedureStep, mpps_uid)
        assert status.Status == 0x0000
        # The same step again, and a step created in a final state, are refused.
        status, _ = assoc.send_n_create(_in_progress(study_uid), ModalityPerformedProcedureStep, mpps_uid)
        assert status.Status == 0x0111
        finished = _in_progress(study_uid)
        finished.PerformedProcedureStepStatus = "COMPLETED"
        status, _ = assoc.send_n_create(finished, ModalityPerformedProcedureStep, generate_uid())
        assert status.Status == 0x0106
        no_study = _in_progress(study_uid)
        del no_study.ScheduledStepAttributesSequence
        status, _ = assoc.send_n_create(no_study, ModalityPerformedProcedureStep, generate_uid())
        assert status.Status == 0x0120
        for path in paths[:2]:
            assert assoc.send_c_store(dcmread(path)).Status == 0x0000
        # The step lists three instances; two have arrived.
        status, _ = assoc.send_n_set(_completed(paths), ModalityPerformedProcedureStep, mpps_uid)
        assert status.Status == 0x0000
        _steady(node.database, study_uid, "receiving", 1.5)
        # An unknown step, a step that ended already, an unknown status.
        status, _ = assoc.send_n_set(_completed(paths), ModalityPerformedProcedureStep, generate_uid())
        assert status.Status == 0x0112
        status, _ = assoc.send_n_set(_completed(paths), ModalityPerformedProcedureStep, mpps_uid)
        assert status.Status == 0x0110 and "COMPLETED" in status.ErrorComment
        assert assoc.send_c_store(dcmread(paths[2])).Status == 0x0000
        elapsed = _wait_state(node.database, study_uid, "complete", 5)
    finally:
        assoc.release()
    assert elapsed < 2.5  # the assembler's pass, not the hour-long quiet period
    with node.database.sessions() as session:
        step = session.scalar(select(PerformedProcedureStep))
        assert step is not None and step.state == MppsState.COMPLETED
        assert len(step.instances) == 3 and step.study_instance_uid == study_uid


def test_mpps_bad_status_is_refused(make_settings, run_node):
    node = run_node(make_settings())
    assoc = _mpps_scu(node.address[1])
    try:
        uid = generate_uid()
        assert (
            assoc.send_n_create(_in_progress(generate_uid()), ModalityPerformedProcedureStep, uid)[0].Status
            == 0
        )
        bad = Dataset()
        bad.PerformedProcedureStepStatus = "FINISHED"
        status, _ = assoc.send_n_set(bad, ModalityPerformedProcedureStep, uid)
        assert status.Status == 0x0106
        empty = Dataset()
        empty.PerformedProcedureStepStatus = "COMPLETED"
        status, _ = assoc.send_n_set(empty, ModalityPerformedProcedureStep, uid)
        assert status.Status == 0x0120  # COMPLETED must list what was performed
        discontinued = Dataset()
        discontinued.PerformedProcedureStepStatus = "DISCONTINUED"
        assert assoc.send_n_set(discontinued, ModalityPerformedProcedureStep, uid)[0].Status == 0
    finally:
        assoc.release()


# --- association release ------------------------------------------------------------------------


def test_release_plus_settle_completes_and_a_late_instance_reopens(
    make_settings, run_node, database_url, tmp_path
):
    node = run_node(
        make_settings(
            quiet_period=3600.0,
            association_settle=0.3,
            routes=(_route("association"),),
            database_url=database_url,
        )
    )
    paths = write_ct_series(tmp_path / "ct", 3, rows=32, columns=32)
    study_uid = str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    storescu(node.address[1], *paths[:2])
    elapsed = _wait_state(node.database, study_uid, "complete", 5)
    assert elapsed < 1.5
    study = _study(node.database, study_uid)
    assert study is not None and study.released_at is not None
    assert (study.completed_at - study.released_at).total_seconds() >= 0.3
    # A late instance re-opens it; its own association's release completes it again as revision 2.
    storescu(node.address[1], paths[2])
    _wait_state(node.database, study_uid, "complete", 5, revision=2)
    assert _study(node.database, study_uid).num_instances == 3


def test_an_aborted_association_is_no_evidence(make_settings, run_node, tmp_path):
    node = run_node(
        make_settings(quiet_period=3600.0, association_settle=0.1, routes=(_route("association"),))
    )
    paths = write_ct_series(tmp_path / "ct", 1, rows=32, columns=32)
    study_uid = str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CT, EXPLICIT)
    assoc = ae.associate("127.0.0.1", node.address[1], ae_title="DICOMNODE")
    assert assoc.send_c_store(dcmread(paths[0])).Status == 0x0000
    assoc.abort()
    _steady(node.database, study_uid, "receiving", 1.5)


def test_one_route_that_waits_for_quiet_keeps_the_study_open(make_settings, run_node, tmp_path):
    """Both routes may match a CT study; the stricter (quiet period) decides for the study."""
    node = run_node(
        make_settings(
            quiet_period=3600.0,
            association_settle=0.1,
            routes=(_route("association"), _route("quiet", pipeline="ct-vertebrae")),
        )
    )
    paths = write_ct_series(tmp_path / "ct", 1, rows=32, columns=32)
    study_uid = str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    storescu(node.address[1], *paths)
    _steady(node.database, study_uid, "receiving", 1.5)


def test_complete_on_is_checked_when_settings_load():
    with pytest.raises(ValueError, match=r"complete_on is one of .*did you mean 'association'"):
        RouteSpec.model_validate(
            {"pipeline": "ct-lung-nodules", "match": {"modality": "CT"}, "complete_on": "asociation"}
        )
