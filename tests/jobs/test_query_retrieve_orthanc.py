"""A real PACS (Debian's Orthanc) with the node as a remote modality queries it and retrieves a study
into itself through its REST API (``/modalities/{id}/query``, ``/queries/{id}/answers/0/retrieve``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from dicom_node.index.models import Instance
from tests.factories import dataset_bytes
from tests.jobs.conftest import NodeUnderTest, free_port
from tests.jobs.test_query_retrieve import CT, CT_STUDY

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
ORTHANC_AE = "ORTHANCQR"


class Orthanc:
    def __init__(self, root: Path, node_port: int) -> None:
        self.root = root
        self.http_port, self.dicom_port = free_port(), free_port()
        self.node_port = node_port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        config = {
            "Name": "dicom-node-qr-test",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": ORTHANC_AE,
            "DicomCheckCalledAet": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [],
            "StorageCompression": False,
            "DicomModalities": {"node": ["NODE", "127.0.0.1", self.node_port]},
        }
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / "orthanc.json"
        path.write_text(json.dumps(config))
        log = (self.root / "orthanc.log").open("w")
        self.process = subprocess.Popen([ORTHANC, str(path)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.call("GET", "/system")
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "Orthanc did not start:\n" + (self.root / "orthanc.log").read_text()
                    ) from None
                time.sleep(0.2)

    def call(self, method: str, path: str, body: Any = None, raw: bool = False) -> Any:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data, method=method)
        with urllib.request.urlopen(request, timeout=60) as response:
            content = response.read()
        return content if raw else json.loads(content or b"null")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    if not Path(ORTHANC).exists():
        pytest.fail("Orthanc is not installed: run scripts/setup --test (Debian package orthanc)")
    server = Orthanc(tmp_path / "orthanc", node_port=free_port())
    try:
        yield server
    finally:
        server.stop()


def test_orthanc_queries_and_retrieves_a_study_byte_identical(
    tmp_path, redis_db, node_factory, orthanc
) -> None:
    node: NodeUnderTest = node_factory()
    node.port = orthanc.node_port
    node.write_config()
    with node.config.open("a", encoding="utf-8") as handle:
        # Orthanc is a move-only peer (no results go there); it may move to itself by default.
        handle.write(
            "[[query_retrieve.peers]]\n"
            f'name = "orthanc"\nae_title = "{ORTHANC_AE}"\nhost = "127.0.0.1"\nport = {orthanc.dicom_port}\n'
        )
    node.serve()
    node.send(CT, options=("-xv",))
    orthanc.start()

    query = orthanc.call(
        "POST", "/modalities/node/query", {"Level": "Study", "Query": {"PatientID": "TSEX*"}}
    )
    answers = orthanc.call("GET", f"/queries/{query['ID']}/answers?expand")
    assert [a["0020,000d"]["Value"] for a in answers] == [CT_STUDY]
    orthanc.call(
        "POST", f"/queries/{query['ID']}/answers/0/retrieve", {"TargetAet": ORTHANC_AE, "Synchronous": True}
    )

    stored = {row.sop_instance_uid: row for row in node.rows(Instance)}
    instances = orthanc.call("GET", "/instances")
    assert len(instances) == len(CT) == 20
    for orthanc_id in instances:
        data = orthanc.call("GET", f"/instances/{orthanc_id}/file", raw=True)
        path = tmp_path / "from-orthanc.dcm"
        path.write_bytes(data)
        uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        mine = node.data_dir / "store" / stored[uid].path
        # Orthanc writes its own File Meta Information; the data set is the node's, bit for bit.
        assert dataset_bytes(path) == dataset_bytes(mine), uid
    assert "C-MOVE" in node.log("serve.log") and ORTHANC_AE in node.log("serve.log")
