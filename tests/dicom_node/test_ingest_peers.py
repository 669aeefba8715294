"""Real peers send real and generated studies; every instance is kept byte-identical and indexed once."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE
from sqlalchemy import func, select
from typer.testing import CliRunner

from dicom_node.cli.app import app
from dicom_node.index.models import Instance, Study, StudyState
from tests.conftest import require_tool
from tests.factories import dataset_bytes, nodelay, write_ct_series


def storescu(port: int, *args: str, ae_title: str = "DICOMNODE") -> subprocess.CompletedProcess[str]:
    """DCMTK storescu: options first, then peer and port, then the files (the last argument)."""
    *options, files = args
    return subprocess.run(
        [require_tool("storescu"), "-aec", ae_title, *options, "127.0.0.1", str(port), files],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def wait_for_state(node, study_uid: str, state: str, timeout: float = 15.0) -> Study:
    deadline = time.monotonic() + timeout
    while True:
        with node.database.sessions() as session:
            study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
            if study is not None and study.state == state:
                return study
        if time.monotonic() > deadline:
            pytest.fail(f"study {study_uid} did not become {state} (now {study.state if study else None})")
        time.sleep(0.1)


def assert_stored_identical(node, sources: list[Path]) -> None:
    with node.database.sessions() as session:
        for source in sources:
            uid = str(dcmread(source, stop_before_pixels=True).SOPInstanceUID)
            rows = session.scalars(select(Instance).where(Instance.sop_instance_uid == uid)).all()
            assert len(rows) == 1, f"{uid} indexed {len(rows)} times"
            stored = node.store.path(rows[0].path)
            assert dataset_bytes(stored) == dataset_bytes(source), f"{uid} differs from what was sent"
            assert rows[0].transfer_syntax_uid == str(
                dcmread(source, stop_before_pixels=True).file_meta.TransferSyntaxUID
            )


def test_dcmtk_echo(make_settings, run_node):
    node = run_node(make_settings())
    port = node.address[1]
    result = subprocess.run(
        [require_tool("echoscu"), "-aec", "DICOMNODE", "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_dcmtk_storescu_real_ct_and_radiograph(make_settings, run_node, database_url, test_data, tmp_path):
    node = run_node(make_settings(database_url=database_url))
    port = node.address[1]
    ct = sorted((test_data / "ct" / "totalseg_dicom").glob("*.dcm"))
    cxr = test_data / "cxr" / "txrv_siim_cxr_sc_jpeg.dcm"
    result = storescu(port, "-xv", "+sd", str(test_data / "ct" / "totalseg_dicom"))
    assert result.returncode == 0, result.stderr
    result = storescu(port, "-xy", str(cxr))
    assert result.returncode == 0, result.stderr

    assert_stored_identical(node, [*ct, cxr])
    ct_study = str(dcmread(ct[0], stop_before_pixels=True).StudyInstanceUID)
    study = wait_for_state(node, ct_study, StudyState.COMPLETE)
    assert study.num_instances == len(ct) == 20
    assert study.patient_id == "TSEXAMPLE01"

    runner = CliRunner()
    env = {"DICOM_NODE_DATA_DIR": str(node.settings.data_dir), "DICOM_NODE_DATABASE_URL": database_url}
    out = runner.invoke(app, ["studies", "--json"], env=env)
    assert out.exit_code == 0, out.output
    listed = {s["study_instance_uid"]: s for s in json.loads(out.stdout)["studies"]}
    assert listed[ct_study]["state"] == "complete"
    assert listed[ct_study]["num_instances"] == 20
    assert listed[ct_study]["modalities"] == ["CT"]
    cxr_study = str(dcmread(cxr, stop_before_pixels=True).StudyInstanceUID)
    assert listed[cxr_study]["series"][0]["modality"] == "CR"


def test_pynetdicom_scu_sends_300_slices(make_settings, run_node, database_url, tmp_path):
    node = run_node(make_settings(database_url=database_url))
    paths = write_ct_series(tmp_path / "ct", 300, rows=128, columns=128)
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", node.address[1], ae_title="DICOMNODE")
    assert assoc.is_established
    nodelay(assoc)
    try:
        for path in paths:
            status = assoc.send_c_store(path)
            assert status.Status == 0x0000
    finally:
        assoc.release()
    assert_stored_identical(node, paths[::25])
    study_uid = str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    study = wait_for_state(node, study_uid, StudyState.COMPLETE)
    assert study.num_instances == 300
    with node.database.sessions() as session:
        assert session.scalar(select(func.count(Instance.id))) == 300


def test_resent_identical_instance_stays_one(make_settings, run_node, test_data):
    node = run_node(make_settings())
    folder = test_data / "ct" / "totalseg_dicom"
    for _ in range(2):
        assert storescu(node.address[1], "-xv", "+sd", str(folder)).returncode == 0
    with node.database.sessions() as session:
        assert session.scalar(select(func.count(Instance.id))) == 20
        assert {i.version for i in session.scalars(select(Instance))} == {1}


def test_resent_changed_instance_replaces_and_keeps_the_earlier_file(make_settings, run_node, tmp_path):
    node = run_node(make_settings())
    (path,) = write_ct_series(tmp_path / "a", 1, rows=32, columns=32)
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
    ds = dcmread(path)
    assoc = ae.associate("127.0.0.1", node.address[1], ae_title="DICOMNODE")
    try:
        assert assoc.send_c_store(ds).Status == 0
        wait_for_state(node, str(ds.StudyInstanceUID), StudyState.COMPLETE)
        ds.SeriesDescription = "Corrected description"
        assert assoc.send_c_store(ds).Status == 0
    finally:
        assoc.release()
    with node.database.sessions() as session:
        (instance,) = session.scalars(select(Instance)).all()
        assert instance.version == 2
        study = session.scalar(select(Study))
        assert study.state == StudyState.UPDATED
    assert dcmread(node.store.path(instance.path)).SeriesDescription == "Corrected description"
    kept = list((node.store.root / ".superseded").rglob("*.dcm.*"))
    assert len(kept) == 1 and dcmread(kept[0]).SeriesDescription == "Generated chest CT"
    study = wait_for_state(node, str(ds.StudyInstanceUID), StudyState.COMPLETE)
    assert study.revision == 2


def test_concurrent_associations(make_settings, run_node, tmp_path):
    node = run_node(make_settings())
    folders = []
    for n in range(4):
        folder = tmp_path / f"s{n}"
        write_ct_series(folder, 40, rows=64, columns=64, seed=n)
        folders.append(folder)
    procs = [
        subprocess.Popen(
            [
                require_tool("storescu"),
                "-aec",
                "DICOMNODE",
                "+sd",
                "127.0.0.1",
                str(node.address[1]),
                str(folder),
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        for folder in folders
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    with node.database.sessions() as session:
        assert session.scalar(select(func.count(Instance.id))) == 160
        assert session.scalar(select(func.count(Study.id))) == 4
