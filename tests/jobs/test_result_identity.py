"""Results through a real node: identity from the input, byte-stable re-runs, one object per job, and the
study's received facts untouched by the node's own objects.

The ``fixed-segmentation`` test pipeline (tests/jobs/fixed_pipeline.py) hands a fixed label map to the
real writers, so what reaches the DCMTK ``storescp`` PACS is the SEG and TID 1500 SR a real job writes.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
from pydicom import dcmread
from sqlalchemy import select

from dicom_node.index.models import Delivery, DeliveryState, Instance, Job, JobState
from tests.jobs.conftest import NodeUnderTest, Pacs, free_port, make_ct_study, wait_for

SEG = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def dataset_bytes(path: Path) -> bytes:
    """The file's data set as received, after the file meta group (which the PACS writes itself)."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM" and data[132:136] == b"\x02\x00\x00\x00", path
    (meta_length,) = struct.unpack("<I", data[140:144])
    return data[144 + meta_length :]


def received(pacs: Pacs) -> list[tuple[Path, str, str]]:
    """(file, SOP Class UID, SOP Instance UID) of every reception, in arrival order."""
    out = []
    for path in sorted(pacs.folder.iterdir(), key=lambda p: p.stat().st_mtime_ns):
        if path.is_file():
            try:
                ds = dcmread(path, stop_before_pixels=True)
            except Exception:  # a file storescp is still writing
                continue
            out.append((path, str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
    return out


def ct_study(folder: Path) -> tuple[str, list[Path]]:
    """A small axial CT with the Type 2 patient and study attributes a modality sends (a SEG copies them)."""
    study_uid, files = make_ct_study(folder, slices=3)
    for path in files:
        ds = dcmread(path)
        ds.PatientBirthDate, ds.PatientSex, ds.StudyID, ds.ReferringPhysicianName = "19600101", "O", "1", ""
        ds.save_as(path, enforce_file_format=True)
    return study_uid, files


def rows(node: NodeUnderTest, model):
    database = node.database()
    try:
        with database.sessions() as session:
            return list(session.scalars(select(model).order_by(model.id)).all())
    finally:
        database.dispose()


def segmentation_node(node_factory, *extra_destinations: tuple[Pacs, str]) -> NodeUnderTest:
    node = node_factory()
    config = node.config.read_text().replace('pipeline = "fixed-cost"', 'pipeline = "fixed-segmentation"')
    for index, (pacs, profile) in enumerate(extra_destinations):
        config += (
            f'[[destinations]]\nname = "pacs{index + 2}"\nae_title = "{pacs.ae_title}"\n'
            f'host = "127.0.0.1"\nport = {pacs.port}\nprofile = "{profile}"\n'
        )
    node.config.write_text(config)
    return node


def all_delivered(node: NodeUnderTest, jobs: int, deliveries: int) -> bool:
    done = [j for j in rows(node, Job) if j.state == JobState.SUCCEEDED]
    sent = [d for d in rows(node, Delivery) if d.state == DeliveryState.DELIVERED]
    return len(done) == jobs and len(sent) == deliveries


def test_two_profiles_get_one_seg_and_the_study_keeps_its_received_facts(
    tmp_path, redis_db, pacs, node_factory
):
    pacs.start()
    ohif_pacs = Pacs(tmp_path / "pacs-ohif", free_port(), ae_title="OHIFPACS")
    ohif_pacs.start()
    try:
        node = segmentation_node(node_factory, (ohif_pacs, "ohif"))
        node.serve()
        node.worker()
        study_uid, files = ct_study(tmp_path / "study")
        node.send(files)
        wait_for(lambda: all_delivered(node, 1, 2), 90, f"both deliveries\n{node.log('worker.log')}")

        standard, ohif = received(pacs), received(ohif_pacs)
        segs = [(p, uid) for p, cls, uid in standard + ohif if cls == SEG]
        assert len(segs) == 2 and len({uid for _, uid in segs}) == 1, segs  # one SEG object, at both
        assert dataset_bytes(segs[0][0]) == dataset_bytes(segs[1][0])
        srs = {uid for _, cls, uid in standard + ohif if cls == COMPREHENSIVE_3D_SR}
        assert len(srs) == 1  # "ohif" is a deprecated alias of "standard": one SR shape, one object
        assert 'report profile "ohif" is deprecated' in node.log("worker.log")
        # The SEG was stored once: no superseded copy, version 1, no "replaced" warning.
        store = node.data_dir / "store"
        assert not [p for p in store.rglob("*") if ".superseded" in p.parts and p.is_file()]
        (seg_row,) = [i for i in rows(node, Instance) if i.sop_instance_uid == segs[0][1]]
        assert seg_row.version == 1
        assert "replaced SOP Instance" not in node.log("worker.log")

        # What the study was received as is what the index still says, results stored or not.
        (study,) = json.loads(node.cli("studies", "--json").stdout)["studies"]
        assert study["study_instance_uid"] == study_uid
        assert study["calling_ae_title"] == "MODALITY"
        assert study["modalities"] == ["CT"]
        assert (study["num_series"], study["num_instances"]) == (1, len(files))
        assert (study["state"], study["revision"]) == ("complete", 1)
        assert len(study["series"]) == 3  # the CT, and the node's SEG and SR series beside it
    finally:
        ohif_pacs.stop()


def test_a_corrected_instance_gets_new_results_that_name_the_old_sr_and_a_rerun_is_byte_identical(
    tmp_path, redis_db, pacs, node_factory
):
    pacs.start()
    node = segmentation_node(node_factory)
    node.serve()
    node.worker()
    study_uid, files = ct_study(tmp_path / "study")
    node.send(files)
    wait_for(lambda: all_delivered(node, 1, 1), 90, f"the first results\n{node.log('worker.log')}")
    first = {cls: (path, uid) for path, cls, uid in received(pacs)}
    old_sr = dcmread(first[COMPREHENSIVE_3D_SR][0])

    # The modality re-sends one slice, corrected (other pixel values, the same SOP Instance UID).
    corrected = dcmread(files[1])
    corrected.PixelData = (np.frombuffer(corrected.PixelData, dtype=np.int16) + 7).tobytes()
    corrected.save_as(tmp_path / "corrected.dcm", enforce_file_format=True)
    node.send([tmp_path / "corrected.dcm"])
    wait_for(lambda: all_delivered(node, 2, 2), 90, f"the second results\n{node.log('worker.log')}")
    jobs = rows(node, Job)
    assert [j.study_revision for j in jobs] == [1, 2]

    second = [
        (path, cls, uid) for path, cls, uid in received(pacs) if uid not in {u for _, u in first.values()}
    ]
    assert sorted(cls for _, cls, _ in second) == sorted([SEG, COMPREHENSIVE_3D_SR]), second
    new_sr_path = next(path for path, cls, _ in second if cls == COMPREHENSIVE_3D_SR)
    new_sr = dcmread(new_sr_path)
    assert new_sr.SeriesInstanceUID != old_sr.SeriesInstanceUID
    (study,) = new_sr.PredecessorDocumentsSequence
    assert study.StudyInstanceUID == study_uid
    (series,) = study.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == old_sr.SeriesInstanceUID
    (instance,) = series.ReferencedSOPSequence
    assert instance.ReferencedSOPInstanceUID == old_sr.SOPInstanceUID
    assert instance.ReferencedSOPClassUID == old_sr.SOPClassUID

    # A plain re-run of the job on the same input: the very same objects, byte for byte.
    before = len(received(pacs))
    result = node.cli("reprocess", study_uid, "--pipeline", "fixed-segmentation")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: len(received(pacs)) == before + 2, 90, f"the re-sent results\n{node.log('worker.log')}")
    for path, cls, uid in second:
        again = [p for p, c, u in received(pacs) if u == uid and p != path]
        assert len(again) == 1, (cls, uid)
        assert dataset_bytes(again[0]) == dataset_bytes(path), cls
    # ... stored once: the corrected CT slice has version 2, every result object version 1.
    results = {u for _, _, u in second}
    assert all(i.version == 1 for i in rows(node, Instance) if i.sop_instance_uid in results)
