"""C-FIND latency: the node beside Orthanc (SQLite) holding the same studies, in the same run.

    .venv/bin/python bench/query.py [--studies 10000] [--queries 50]

Generates ``--studies`` studies of one tiny CT/MR/CR instance each (8×8 pixels; a patient has two
studies, names ``FAMILY^GIVEN`` over 26 families, dates over 2015–2024), sends the same files by C-STORE
(pynetdicom, one association, TCP_NODELAY) to ``dicom-node serve`` (SQLite, a temporary data dir) and to
Debian's ``Orthanc`` (SQLite, started here with a JSON config), then times ``--queries`` C-FINDs of each
kind on one open association per server (association set-up excluded), with keys chosen at random per
query from what was sent:

* by PatientID (STUDY level, Study Root);
* by wildcard name (``PatientName=FAMILY^G*``, STUDY level);
* by date range (one month of StudyDate, STUDY level);
* the series of one study (SERIES level, by StudyInstanceUID).

Each row gives median and p95 in milliseconds and the mean number of matches (the same on both sides,
or the row says so). The QIDO-RS columns time the same queries as ``/studies?…`` (and
``/studies/{uid}/series``) against the node's DICOMweb (``[dicomweb] enabled``, loopback, no tokens) and
Orthanc's DICOMweb plugin (``libOrthancDicomWeb.so``), one HTTP connection per request; they print ``n/a``
when the plugin is not installed. Their match counts are checked against the C-FIND ones.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.client import HTTPConnection
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

REPO = Path(__file__).resolve().parents[1]
STALL = 30.0
ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
FAMILIES = [f"{chr(65 + i)}{'ABCDEFGH'[i % 8]}SMITH" for i in range(26)]
SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


@dataclass(frozen=True)
class Study:
    patient_id: str
    patient_name: str
    study_date: str
    study_uid: str
    path: Path


def generate(folder: Path, count: int, seed: int = 12) -> list[Study]:
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    studies = []
    pixels = np.zeros((8, 8), dtype=np.uint16).tobytes()
    for index in range(count):
        patient = index // 2
        modality = ("CT", "MR", "CR")[index % 3]
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SOP_CLASSES[modality]
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID = f"P{patient:06d}"
        ds.PatientName = f"{FAMILIES[patient % 26]}^G{patient:06d}"
        ds.PatientBirthDate, ds.PatientSex = "19700101", "MF"[patient % 2]
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.StudyDate = f"{2015 + rng.randrange(10)}{1 + rng.randrange(12):02d}{1 + rng.randrange(28):02d}"
        ds.StudyTime, ds.AccessionNumber, ds.StudyID = "120000", f"A{index:07d}", str(index)
        ds.StudyDescription, ds.ReferringPhysicianName = f"{modality} bench study", "REF^DOC"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 1, 1
        ds.Rows = ds.Columns = 8
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = pixels
        path = folder / f"{index:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        studies.append(Study(ds.PatientID, str(ds.PatientName), ds.StudyDate, str(ds.StudyInstanceUID), path))
    return studies


def _nodelay(assoc: object) -> None:
    sock = assoc.dul.socket  # type: ignore[attr-defined]
    if sock is not None and sock.socket is not None:
        sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def send(port: int, ae_title: str, studies: list[Study]) -> float:
    """C-STORE every study's file; returns the seconds it took. An answer that does not come within
    ``STALL`` seconds (seen on this shared machine, on both servers: both sides idle on an established
    association) is reported, and that instance is sent again on a fresh association."""
    ae = AE(ae_title="BENCHSCU")
    ae.dimse_timeout = STALL
    ae.network_timeout = 600
    for sop_class in SOP_CLASSES.values():
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    started = time.perf_counter()
    index, stalls = 0, 0
    while index < len(studies):
        assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
        assert assoc.is_established, f"{ae_title} refused the association"
        _nodelay(assoc)
        try:
            for _ in range(500):  # a fresh association now and then
                if index == len(studies):
                    break
                status = assoc.send_c_store(studies[index].path)
                if "Status" not in status:
                    stalls += 1
                    print(
                        f"  {ae_title}: no answer within {STALL} s to instance {index + 1}; sending it again"
                    )
                    assert stalls < 5, "too many stalls"
                    break
                assert status.Status == 0, f"{ae_title}: status 0x{status.Status:04X}"
                index += 1
        finally:
            if assoc.is_established:
                assoc.release()
            else:
                assoc.abort()
    return time.perf_counter() - started


def upload(http_port: int, studies: list[Study]) -> float:
    """POST every study's file to Orthanc's REST ``/instances`` (its own upload, one keep-alive
    connection); returns the seconds it took. ``--orthanc-fill rest``: the query columns compare what
    each server answers over the same index, however it was filled."""
    connection = HTTPConnection("127.0.0.1", http_port, timeout=600)
    started = time.perf_counter()
    for study in studies:
        connection.request(
            "POST", "/instances", body=study.path.read_bytes(), headers={"Content-Type": "application/dicom"}
        )
        response = connection.getresponse()
        body = response.read()
        assert response.status == 200, f"Orthanc: HTTP {response.status} {body[:200]!r}"
    connection.close()
    return time.perf_counter() - started


@contextmanager
def node(workdir: Path, web_port: int) -> Iterator[int]:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DICOM_NODE_")},
        "DICOM_NODE_DATA_DIR": str(workdir / "node"),
        "DICOM_NODE_QUIET_PERIOD": "86400",
        "DICOM_NODE_BROKER_URL": "filesystem://",
        "DICOM_NODE_SHUTDOWN_GRACE": "2",
        # On a loaded machine one fsync can stall for a minute: the node must not abort the sender.
        "DICOM_NODE_TIMEOUTS__NETWORK": "600",
        "DICOM_NODE_TIMEOUTS__DIMSE": "600",
        "DICOM_NODE_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        "PYTHONPATH": str(REPO),  # this checkout's node, whichever one the virtualenv installed
        "DICOM_NODE_DICOMWEB__ENABLED": "true",  # loopback and no token file: open to this bench only
        "DICOM_NODE_DICOMWEB__PORT": str(web_port),
    }
    command = [
        sys.executable,
        "-c",
        "from dicom_node.cli.app import main; main()",
        "serve",
        "--host",
        "127.0.0.1",
    ]
    proc = subprocess.Popen(
        [*command, "--port", str(port), "--no-worker"],
        env=env,
        stdout=(workdir / "node.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_port(port)
        wait_port(web_port)
        yield port
    except BaseException:
        print((workdir / "node.log").read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        proc.terminate()
        proc.wait(30)


@contextmanager
def orthanc(workdir: Path, dicomweb: bool) -> Iterator[tuple[int, int]]:
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "bench",
        "StorageDirectory": str(workdir / "orthanc"),
        "IndexDirectory": str(workdir / "orthanc"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowFind": True,  # the bench's SCU is not in DicomModalities
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "StorageCompression": False,
        "Plugins": [str(DICOMWEB_PLUGIN)] if dicomweb else [],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    path = workdir / "orthanc.json"
    path.write_text(json.dumps(config))
    proc = subprocess.Popen(
        [ORTHANC, str(path)],
        env={**os.environ, "TCP_NODELAY": "1"},  # DCMTK's switch: Orthanc's responses are not held by Nagle
        stdout=(workdir / "orthanc.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_port(dicom_port)
        wait_port(http_port)
        yield dicom_port, http_port
    finally:
        proc.terminate()
        proc.wait(30)


Kind = Callable[[random.Random], tuple[str, dict[str, str], str]]
"""→ (level, keys, QIDO-RS query string)."""


def kinds(studies: list[Study]) -> dict[str, Kind]:
    def by_patient(rng: random.Random) -> tuple[str, dict[str, str], str]:
        pid = rng.choice(studies).patient_id
        return "STUDY", {"PatientID": pid, "StudyInstanceUID": "", "StudyDate": ""}, f"PatientID={pid}"

    def by_name(rng: random.Random) -> tuple[str, dict[str, str], str]:
        name = rng.choice(studies).patient_name
        pattern = name[: name.index("^") + 4] + "*"  # FAMILY^G00*: about 1/26 × 1/100 of the patients
        keys = {"PatientName": pattern, "StudyInstanceUID": "", "PatientID": ""}
        return "STUDY", keys, f"PatientName={pattern}"

    def by_date(rng: random.Random) -> tuple[str, dict[str, str], str]:
        month = rng.choice(studies).study_date[:6]
        span = f"{month}01-{month}31"
        return "STUDY", {"StudyDate": span, "StudyInstanceUID": ""}, f"StudyDate={span}"

    def series_of_study(rng: random.Random) -> tuple[str, dict[str, str], str]:
        uid = rng.choice(studies).study_uid
        keys = {"StudyInstanceUID": uid, "SeriesInstanceUID": "", "Modality": "", "SeriesNumber": ""}
        return "SERIES", keys, f"/studies/{uid}/series"

    return {
        "by PatientID": by_patient,
        "by wildcard name": by_name,
        "by date range (1 month)": by_date,
        "series of one study": series_of_study,
    }


def c_find(assoc: object, level: str, keys: dict[str, str]) -> int:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    matches = 0
    for status, _ in assoc.send_c_find(ds, StudyRootQueryRetrieveInformationModelFind):  # type: ignore[attr-defined]
        if status.Status in (0xFF00, 0xFF01):
            matches += 1
        elif status.Status != 0:
            raise RuntimeError(f"C-FIND failed: 0x{status.Status:04X}")
    return matches


def qido(base: str, query: str) -> int:
    path = query if query.startswith("/") else f"/studies?{query}"
    request = urllib.request.Request(base + path, headers={"Accept": "application/dicom+json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        body = response.read()
    return len(json.loads(body)) if body else 0


def timed(runs: list[Callable[[], int]]) -> tuple[float, float, float]:
    """Median and p95 (ms) of the runs, and their mean result (matches)."""
    seconds, counts = [], []
    for run in runs:
        started = time.perf_counter()
        counts.append(run())
        seconds.append(time.perf_counter() - started)
    seconds.sort()
    p95 = seconds[min(len(seconds) - 1, round(0.95 * (len(seconds) - 1)))]
    return statistics.median(seconds) * 1000, p95 * 1000, statistics.mean(counts)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--studies", type=int, default=10000)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument(
        "--orthanc-fill",
        choices=("dimse", "rest"),
        default="dimse",
        help="fill Orthanc by C-STORE (default) or by its REST upload (POST /instances)",
    )
    args = parser.parse_args()
    if not Path(ORTHANC).exists():
        sys.exit("Orthanc is not installed (Debian package orthanc)")
    web = DICOMWEB_PLUGIN.exists()
    web_port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-query-") as tmp:
        workdir = Path(tmp)
        started = time.perf_counter()
        studies = generate(workdir / "files", args.studies)
        print(
            f"generated {len(studies)} studies in {time.perf_counter() - started:.1f} s;",
            f"{os.cpu_count()} CPUs",
        )
        with node(workdir, web_port) as node_port, orthanc(workdir, dicomweb=web) as (orthanc_port, http):
            seconds = send(node_port, "DICOMNODE", studies)
            print(f"node:    {len(studies)} C-STOREs in {seconds:.1f} s ({len(studies) / seconds:.0f}/s)")
            if args.orthanc_fill == "rest":
                seconds = upload(http, studies)
                how = "REST uploads"
            else:
                seconds = send(orthanc_port, "ORTHANC", studies)
                how = "C-STOREs"
            print(f"Orthanc: {len(studies)} {how} in {seconds:.1f} s ({len(studies) / seconds:.0f}/s)")
            ae = AE(ae_title="BENCHSCU")
            ae.dimse_timeout = ae.network_timeout = 600
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
            peers = {}
            for name, port, title in (("node", node_port, "DICOMNODE"), ("orthanc", orthanc_port, "ORTHANC")):
                assoc = ae.associate("127.0.0.1", port, ae_title=title)
                assert assoc.is_established, f"{title} refused the C-FIND association"
                _nodelay(assoc)
                peers[name] = assoc
            print(
                f"\nC-FIND over {len(studies)} studies, {args.queries} queries per kind, "
                "median / p95 ms (matches per query)"
            )
            header = (
                f"{'query':26} {'node C-FIND':>22} {'Orthanc C-FIND':>22}"
                f" {'node QIDO-RS':>16} {'Orthanc QIDO-RS':>16}"
            )
            print(header)
            print("-" * len(header))
            try:
                for label, make in kinds(studies).items():
                    rng = random.Random(label)
                    queries = [make(rng) for _ in range(args.queries)]
                    # One warm-up query each (caches, prepared statements), then the timed ones.
                    for assoc in peers.values():
                        c_find(assoc, queries[0][0], queries[0][1])
                    cells = []
                    counts = []
                    for assoc in peers.values():
                        median, p95, mean = timed(
                            [lambda q=q, a=assoc: c_find(a, q[0], q[1]) for q in queries]
                        )
                        cells.append(f"{median:7.1f} / {p95:7.1f} ({mean:.0f})")
                        counts.append(mean)
                    if web:
                        for base in (
                            f"http://127.0.0.1:{web_port}/dicom-web",
                            f"http://127.0.0.1:{http}/dicom-web",
                        ):
                            qido(base, queries[0][2])  # warm-up, as for C-FIND
                            median, p95, mean = timed([lambda q=q, b=base: qido(b, q[2]) for q in queries])
                            cells.append(f"{median:6.1f} / {p95:6.1f}")
                            counts.append(mean)
                    else:
                        cells += ["n/a", "n/a"]
                    note = "" if len(set(counts)) == 1 else f"  (match counts differ: {counts})"
                    print(f"{label:26} {cells[0]:>22} {cells[1]:>22} {cells[2]:>16} {cells[3]:>16}{note}")
            finally:
                for assoc in peers.values():
                    assoc.release()


if __name__ == "__main__":
    main()
