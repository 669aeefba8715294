"""Two end-to-end checks on one node run with the shipped configuration (``shipped_ct_run``).

The run is the session's ``shipped_ct_run`` (tests/jobs/shipped_ct.py): the vertebra network runs once
per series sent, for both tests. They are in one file so that pytest-xdist (``--dist loadfile``, as
scripts/test runs the suite) gives them one worker, and so one run.

**Content checks** decide on the pixels, in the worker, before a pipeline.

Real processes: ``dicom-node serve`` and ``dicom-node worker`` on Redis, DCMTK ``storescu`` as the
modality and ``storescp`` as the PACS; ``jobs`` and ``route --explain`` run as subprocesses. The vertebra
model has scaffold weights (the published architecture, untrained: plumbing, never findings) and the
nodule model none, so a nodule job could only end skipped; the content check runs first and says why.

- The shared CT (Siemens, PARTIALBODY, lower thorax): routed to both CT pipelines by geometry; its spine
  check passes and the vertebra pipeline runs; its lung check measures the lung bases (about 50 ml of air
  inside the body, under 100 ml) and the nodule job ends skipped with that figure.
- A generated head CT with no tags at all (so geometry alone routes it): both jobs end skipped, "no lung
  in field of view" and "no spine in field of view", with the figures in ``jobs`` and ``route --explain``.

**Multi-frame CT.** Enhanced CT and Legacy Converted Enhanced CT, sent as one multi-frame object each:
indexed with their real geometry, routed and analysed like the single-frame series they
came from, and their SEGs hold the same label map, frame for frame, with each frame derived from its
source frame.

Real processes: ``dicom-node serve`` and ``dicom-node worker`` on Redis, DCMTK ``storescu`` as the
modality and ``storescp`` as the PACS; the vertebra model has scaffold weights (the published
architecture, untrained: this proves indexing, routing and frame references, never the findings' value).
"""

from __future__ import annotations

import json
import subprocess

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from dicom_node.index.models import Delivery, DeliveryState, Job, JobState, Series, Study
from tests.jobs.conftest import CLI, NodeUnderTest
from tests.jobs.shipped_ct import TIMEOUT
from tests.multiframe import LEGACY_VALIDATOR_GAP
from tests.reports.tools import dciodvfy_errors

pytestmark = pytest.mark.slow


def _wide_cli(node: NodeUnderTest, *args: str) -> subprocess.CompletedProcess[str]:
    """A CLI command on the stopped node, with a terminal wide enough that rich wraps no table cell."""
    return subprocess.run(
        [*CLI, *args],
        cwd=node.root,
        env={**node.env(), "COLUMNS": "300"},
        capture_output=True,
        text=True,
        timeout=60,
    )


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
    table = _wide_cli(node, "jobs", "--study", head_uid)
    assert table.returncode == 0, table.stderr
    assert "no lung in field of view: " in table.stdout and "lungs " in table.stdout

    explained = _wide_cli(node, "route", "--explain", head_uid)
    assert explained.returncode == 0, explained.stderr
    job_id = jobs[(head_uid, "ct-lung-nodules")].id
    assert f"content check lungs (job {job_id}): FAIL, no lung in field of view: " in explained.stdout
    assert (
        "content check spine (job " in explained.stdout
        and "FAIL, no spine in field of view" in explained.stdout
    )


SEG = "1.2.840.10008.5.1.4.1.1.66.4"


def _seg_frames(seg: Dataset) -> dict[tuple[tuple[float, ...], str], bytes]:
    """A SEG's frames by (Image Position (Patient), segment label): its label map in patient space."""
    labels = {int(item.SegmentNumber): str(item.SegmentLabel) for item in seg.SegmentSequence}
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    out = {}
    for item, frame in zip(seg.PerFrameFunctionalGroupsSequence, frames, strict=True):
        position = tuple(round(float(v), 3) for v in item.PlanePositionSequence[0].ImagePositionPatient)
        segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        out[(position, labels[segment])] = frame.tobytes()
    return out


def _frame_positions(image: Dataset) -> dict[int, tuple[float, ...]]:
    return {
        number: tuple(round(float(v), 3) for v in item.PlanePositionSequence[0].ImagePositionPatient)
        for number, item in enumerate(image.PerFrameFunctionalGroupsSequence, start=1)
    }


@pytest.mark.timeout(TIMEOUT)  # the shared run: three vertebra runs on CPU, one after the other
def test_multiframe_ct_is_indexed_routed_and_analysed_like_its_source_series(tmp_path, shipped_ct_run):
    run = shipped_ct_run
    legacy, enhanced, node, pacs = run.legacy, run.enhanced, run.node, run.pacs
    for path, gaps in ((legacy, [LEGACY_VALIDATOR_GAP]), (enhanced, [])):
        errors, output = dciodvfy_errors(path)
        assert errors == gaps, output
    # This test's studies: the shared CT and its two multi-frame forms (the run also holds a head CT).
    studies = {study.id: study.study_instance_uid for study in node.rows(Study)}
    mine = {
        run.ct_study,
        *(str(dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in (legacy, enhanced)),
    }
    ours = {study_id for study_id, uid in studies.items() if uid in mine}

    # Indexed with the geometry of the functional groups: as the single-frame series, in one instance.
    # (The series sent; their studies also hold the result series stored into them.)
    sent = {str(dcmread(p, stop_before_pixels=True).SeriesInstanceUID) for p in (run.ct[0], legacy, enhanced)}
    series = [s for s in node.rows(Series) if s.series_instance_uid in sent]
    assert len(series) == 3 and {s.study_id for s in series} <= ours, [
        (s.series_instance_uid, s.num_instances) for s in node.rows(Series)
    ]
    single = next(s for s in series if s.num_instances == 20)
    for multi in (s for s in series if s is not single):
        assert (multi.num_instances, multi.num_frames) == (1, 20)
        assert multi.orientation == single.orientation == "axial"
        assert multi.slice_thickness == single.slice_thickness == 3.0
        assert (multi.slice_position_min, multi.slice_position_max) == (
            single.slice_position_min,
            single.slice_position_max,
        )

    # Per series a vertebra job, and a nodule job that its content check skips (too little lung).
    jobs = [j for j in node.rows(Job) if j.study_id in ours]
    assert len(jobs) == 6 and all(j.state not in (JobState.QUEUED, JobState.RUNNING) for j in jobs), [
        (j.pipeline, j.state) for j in jobs
    ]
    vertebrae = [j for j in jobs if j.pipeline == "ct-vertebrae"]
    assert [j.state for j in vertebrae] == [JobState.SUCCEEDED] * 3, (
        [(j.pipeline, j.state, j.error) for j in jobs],
        node.log("worker.log"),
    )
    nodules = [j for j in jobs if j.pipeline == "ct-lung-nodules"]
    assert [j.state for j in nodules] == [JobState.SKIPPED] * 3, [(j.state, j.error) for j in nodules]
    assert all("lung in field of view" in (j.error or "") for j in nodules), [j.error for j in nodules]
    # One delivery per job (its SEG and SR to the PACS).
    job_ids = {j.id for j in vertebrae}
    deliveries = [d for d in node.rows(Delivery) if d.job_id in job_ids]
    assert len(deliveries) == 3 and all(x.state == DeliveryState.DELIVERED for x in deliveries), deliveries
    received = [dcmread(p) for p in sorted(pacs.folder.iterdir()) if p.is_file()]
    segs = {
        str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID): ds for ds in received if ds.SOPClassUID == SEG
    }
    assert len(segs) == 3, sorted(segs)
    reference = _seg_frames(segs[single.series_instance_uid])
    assert reference, "the scaffold SEG holds no frame"
    for source in (legacy, enhanced):
        image = dcmread(source)
        seg = segs[str(image.SeriesInstanceUID)]
        # The same label map in patient space, frame by frame.
        assert _seg_frames(seg) == reference
        # Each SEG frame is derived from the source frame at its own position, by frame number.
        positions = _frame_positions(image)
        for item in seg.PerFrameFunctionalGroupsSequence:
            (source_ref,) = item.DerivationImageSequence[0].SourceImageSequence
            assert source_ref.ReferencedSOPInstanceUID == image.SOPInstanceUID
            frame = int(source_ref.ReferencedFrameNumber)
            assert positions[frame] == tuple(
                round(float(v), 3) for v in item.PlanePositionSequence[0].ImagePositionPatient
            )
        (series_ref,) = seg.ReferencedSeriesSequence
        assert [i.ReferencedSOPInstanceUID for i in series_ref.ReferencedInstanceSequence] == [
            image.SOPInstanceUID
        ]
        written = tmp_path / f"seg-{image.SOPClassUID}.dcm"
        seg.save_as(written)
        assert dciodvfy_errors(written)[0] == [], dciodvfy_errors(written)[1]

    # route --explain names the frames where it counts images (the nodule rule wants 40 of them).
    for multi in (s for s in series if s is not single):
        explained = node.cli("route", "--explain", studies[multi.study_id])
        assert explained.returncode == 0, explained.stderr
        assert "multi-frame: 20 frames in 1 instance" in explained.stdout, explained.stdout
        assert "ct-vertebrae" in explained.stdout
