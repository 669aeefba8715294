"""A real PACS (Debian's Orthanc) accepts the source study and our SR/SEG/companion by C-STORE."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from socket import IPPROTO_TCP, TCP_NODELAY

import pydicom
import pytest
from pynetdicom import AE, build_context

from dicom_node.reports import CompanionType, ReportProfile, write_results

from .conftest import classification_result, vertebra_result
from .data import ct_series, cxr

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Pacs:
    http: str
    dicom_port: int
    ae_title: str

    def get(self, path: str) -> object:
        with urllib.request.urlopen(f"{self.http}{path}", timeout=10) as response:
            return json.loads(response.read())


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Pacs]:
    if not Path(ORTHANC).exists():
        pytest.skip("Orthanc is not installed (Debian package orthanc)")
    http_port, dicom_port = _free_port(), _free_port()
    config = {
        "Name": "dicom-node-test",
        "StorageDirectory": str(tmp_path / "storage"),
        "IndexDirectory": str(tmp_path / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANCTEST",
        "DicomServerEnabled": True,
        "DicomCheckCalledAet": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],
        "HttpServerEnabled": True,
        "StorageCompression": False,
    }
    config_path = tmp_path / "orthanc.json"
    config_path.write_text(json.dumps(config))
    log = (tmp_path / "orthanc.log").open("w")
    process = subprocess.Popen([ORTHANC, str(config_path)], stdout=log, stderr=subprocess.STDOUT)
    pacs = Pacs(http=f"http://127.0.0.1:{http_port}", dicom_port=dicom_port, ae_title="ORTHANCTEST")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                pacs.get("/system")
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "Orthanc did not start:\n" + (tmp_path / "orthanc.log").read_text()
                    ) from None
                time.sleep(0.2)
        yield pacs
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _c_store(pacs: Pacs, datasets: list[pydicom.Dataset]) -> list[int]:
    ae = AE(ae_title="DICOMNODETEST")
    contexts = {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}
    ae.requested_contexts = [build_context(sop, [syntax]) for sop, syntax in sorted(contexts)]
    assoc = ae.associate("127.0.0.1", pacs.dicom_port, ae_title=pacs.ae_title)
    assert assoc.is_established, "Orthanc refused the association"
    statuses = []
    try:
        assoc.dul.socket.socket.setsockopt(IPPROTO_TCP, TCP_NODELAY, 1)  # type: ignore[union-attr]
        for ds in datasets:
            status = assoc.send_c_store(ds)
            statuses.append(int(status.Status) if status else -1)
    finally:
        assoc.release()
    return statuses


def test_orthanc_files_our_objects_under_the_source_study(orthanc: Pacs) -> None:
    profile = ReportProfile(companion=CompanionType.SECONDARY_CAPTURE)
    ct_objects = write_results(vertebra_result(), list(ct_series()), profile)
    cxr_objects = write_results(classification_result(), [cxr()], profile)
    ours = ct_objects + cxr_objects
    # Send as the bytes would go on the wire from our store: encoded, with file meta.
    ours = [pydicom.dcmread(_as_file(ds)) for ds in ours]
    statuses = _c_store(orthanc, [*ct_series(), cxr(), *ours])
    assert statuses == [0] * len(statuses), statuses

    for study_uid, objects, source_count in (
        (ct_series()[0].StudyInstanceUID, ct_objects, 20),
        (cxr().StudyInstanceUID, cxr_objects, 1),
    ):
        studies = _find(orthanc, "Study", {"StudyInstanceUID": str(study_uid)})
        assert len(studies) == 1, f"expected one study {study_uid}, Orthanc has {studies}"
        series = orthanc.get(f"/studies/{studies[0]}/series")
        assert isinstance(series, list)
        by_uid = {s["MainDicomTags"]["SeriesInstanceUID"]: s for s in series}
        for ds in objects:
            assert str(ds.SeriesInstanceUID) in by_uid, (
                f"{ds.Modality} {ds.SeriesDescription} not in the study"
            )
            assert by_uid[str(ds.SeriesInstanceUID)]["MainDicomTags"]["Modality"] == ds.Modality
        instances = orthanc.get(f"/studies/{studies[0]}/instances")
        assert isinstance(instances, list) and len(instances) == source_count + len(objects)


def _find(pacs: Pacs, level: str, query: dict[str, str]) -> list[str]:
    request = urllib.request.Request(
        f"{pacs.http}/tools/find",
        data=json.dumps({"Level": level, "Query": query}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        result = json.loads(response.read())
    assert isinstance(result, list)
    return [str(x) for x in result]


def _as_file(ds: pydicom.Dataset) -> object:
    from io import BytesIO

    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return buffer
