"""Real peers for the job tests: Redis db 7, ``dicom-node serve``/``worker`` subprocesses, DCMTK storescp.

Nothing here mocks Celery, Redis or an AE: the node and its workers are separate processes started as a
hospital would start them, the PACS is DCMTK's ``storescp`` (with TCP_NODELAY=1), and every wait polls
the index or the PACS folder with a deadline.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)
from sqlalchemy import select

from dicom_node.index.database import Database
from tests.jobs.recording_pacs import RecordingPacs

REPO = Path(__file__).resolve().parents[2]


def redis_db_number(offset: int = 0) -> int:
    """This session's Redis database: ``$DICOM_NODE_TEST_REDIS_DB`` (7 unless a run beside CI picks
    another) plus the pytest-xdist worker's index, so that workers never flush each other's queues.

    ``offset`` > 0 names a second database per worker (the topology test's), past every worker's first
    one: with 1 or 2 workers the second is the first + 2, as it always was.
    """
    base = int(os.environ.get("DICOM_NODE_TEST_REDIS_DB", "7"))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")  # set by pytest-xdist in each of its workers
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(worker.removeprefix("gw"))
    return base + index + (max(2, workers) * offset)


REDIS_DB = redis_db_number()
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
CLI = [sys.executable, "-c", "from dicom_node.cli.app import main; main()"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def stop_process(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the process group, SIGKILL it after ``grace``."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@dataclass
class Pacs:
    """DCMTK storescp writing every received object under ``folder`` (unique names: duplicates show)."""

    folder: Path
    port: int
    ae_title: str = "PACS"
    process: subprocess.Popen[bytes] | None = None

    def start(self, *options: str) -> None:
        """Listen; ``options`` go to storescp before the port (e.g. ``+tls key crt +cf ca.crt``)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["storescp", "-aet", self.ae_title, "-od", str(self.folder), "+uf", *options, str(self.port)],
            env={**os.environ, "TCP_NODELAY": "1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for(lambda: port_open(self.port), 10, "storescp to listen")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, grace=3)
            self.process = None

    def received(self) -> list[str]:
        """SOP Instance UIDs of every file received, one entry per reception."""
        uids = []
        for path in sorted(self.folder.iterdir()):
            if path.is_file():
                try:
                    uids.append(str(dcmread(path, stop_before_pixels=True).SOPInstanceUID))
                except Exception:  # a file storescp is still writing
                    continue
        return uids


@dataclass
class NodeUnderTest:
    """A node's settings file and data dir, and the processes started on it."""

    root: Path
    pacs: Pacs | RecordingPacs
    broker_url: str
    port: int = field(default_factory=free_port)
    database_url: str = ""  # empty: SQLite in the data dir
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.root / "node.toml"

    @property
    def data_dir(self) -> Path:
        return self.root / "var"

    def write_config(self, destination: dict[str, Any] | None = None, **jobs: Any) -> None:
        """The node's TOML file: ``jobs`` into ``[jobs]``, ``destination`` into the PACS's entry."""
        settings = {
            "reconcile_interval": 0.3,
            "queued_lease": 30,
            "running_lease": 3,
            "delivery_backoff": 0.5,
            "delivery_backoff_max": 2,
            "task_time_limit": 120,
            "plugins": ["tests.jobs.fixed_pipeline"],
            **jobs,
        }
        lines = [
            'ae_title = "NODE"',
            f"port = {self.port}",
            'host = "127.0.0.1"',
            f'data_dir = "{self.data_dir}"',
            "quiet_period = 0.5",
            "series_quiet_period = 0.3",
            "[jobs]",
            *(f"{k} = {_toml(v)}" for k, v in settings.items()),
            "[[destinations]]",
            'name = "pacs"',
            f'ae_title = "{self.pacs.ae_title}"',
            'host = "127.0.0.1"',
            f"port = {self.pacs.port}",
            *(f"{k} = {_toml(v)}" for k, v in (destination or {}).items()),
            "[[routes]]",
            'pipeline = "fixed-cost"',
            'select = "thinnest"',
            "[routes.match]",
            'modality = "CT"',
            'orientation = "axial"',
            'num_instances = ">= 2"',
            'image_type_not = ["LOCALIZER"]',
            "[[routes]]",  # radiographs: the same test pipeline (its cost can differ by modality)
            'pipeline = "fixed-cost"',
            'select = "first"',
            "[routes.match]",
            'modality = "DX"',
        ]
        self.config.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_NODE_")}
        env.update(
            PYTHONPATH=str(REPO),
            DICOM_NODE_CONFIG=str(self.config),
            DICOM_NODE_BROKER_URL=self.broker_url,
            DICOM_NODE_LOG_LEVEL="INFO",
            **extra,
        )
        if self.database_url:
            env.setdefault("DICOM_NODE_DATABASE_URL", self.database_url)
        return env

    def _start(self, args: list[str], log: str, **env: str) -> subprocess.Popen[bytes]:
        handle = (self.root / log).open("ab")
        process = subprocess.Popen(
            [*CLI, *args],
            cwd=self.root,
            env=self.env(**env),
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        handle.close()
        self.processes.append(process)
        return process

    def serve(self, *args: str, worker: bool = False, **env: str) -> subprocess.Popen[bytes]:
        process = self._start(["serve", *args] + ([] if worker else ["--no-worker"]), "serve.log", **env)
        wait_for(lambda: port_open(self.port) or process.poll() is not None, 60, "the node to listen")
        assert process.poll() is None, self.log("serve.log")
        return process

    def worker(self, pipeline_seconds: float = 0.2, concurrency: int = 1) -> subprocess.Popen[bytes]:
        return self._start(
            ["worker", "--concurrency", str(concurrency)],
            "worker.log",
            DICOM_NODE_TEST_PIPELINE_SECONDS=str(pipeline_seconds),
        )

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, *args], cwd=self.root, env=self.env(), capture_output=True, text=True, timeout=60
        )

    def log(self, name: str) -> str:
        path = self.root / name
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def rows(self, model: Any) -> list[Any]:
        """Every row of ``model`` in this node's index, in id order (a fresh read each call)."""
        database = self.database()
        try:
            with database.sessions() as session:
                return list(session.scalars(select(model).order_by(model.id)).all())
        finally:
            database.dispose()

    def database(self) -> Database:
        if self.database_url:
            return Database(self.database_url)
        return Database(f"sqlite:///{(self.data_dir / 'index.sqlite3').resolve()}")

    def send(
        self,
        files: list[Path],
        called_ae_title: str = "NODE",
        options: tuple[str, ...] = (),
        timeout: float = 60,
    ) -> None:
        """C-STORE ``files`` (folders too, with ``options`` such as ``+sd``) to the node with DCMTK
        storescu (TCP_NODELAY=1, as DESIGN.md asks); ``-R`` proposes the files' own SOP classes."""
        result = subprocess.run(
            [
                "storescu",
                "-aet",
                "MODALITY",
                "-aec",
                called_ae_title,
                *options,
                "127.0.0.1",
                str(self.port),
                *map(str, files),
            ],
            env={**os.environ, "TCP_NODELAY": "1"},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert result.returncode == 0, f"storescu exit {result.returncode}: {result.stdout}{result.stderr}"

    def stop(self) -> None:
        for process in reversed(self.processes):
            stop_process(process)


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def make_ct_study(folder: Path, slices: int = 3, thickness: float = 1.0) -> tuple[str, list[Path]]:
    """A tiny axial CT series (16×16 pixels) written as files; returns the study UID and the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for index in range(slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        sop_uid = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_uid
        ds.PatientID, ds.PatientName = "JOBS-TEST", "Test^Jobs"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20250101", "120000", "A1"
        ds.Modality, ds.BodyPartExamined, ds.SeriesNumber, ds.InstanceNumber = "CT", "CHEST", 2, index + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0, 0, index * thickness]
        ds.SliceThickness, ds.PixelSpacing, ds.KVP = thickness, [0.7, 0.7], 120
        ds.Rows = ds.Columns = 16
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = np.full((16, 16), index, dtype=np.int16).tobytes()
        path = folder / f"{index}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return str(study_uid), paths


def make_dx_study(folder: Path) -> tuple[str, list[Path]]:
    """One small chest radiograph (DX, 32×32 pixels) written as a file; returns the study UID and path."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    sop_uid = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SOPClassUID, ds.SOPInstanceUID = DigitalXRayImageStorageForPresentation, sop_uid
    ds.PatientID, ds.PatientName = "JOBS-TEST", "Test^Jobs"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20250101", "130000", "A2"
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Rows = ds.Columns = 32
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.full((32, 32), 100, dtype=np.uint16).tobytes()
    path = folder / "dx.dcm"
    ds.save_as(path, enforce_file_format=True)
    return str(ds.StudyInstanceUID), [path]


def flushed_redis(url: str) -> Iterator[redis.Redis]:
    """A client on the test database ``url``, emptied before and after; fails loudly without Redis."""
    client = redis.Redis.from_url(url)
    client.ping()
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


@pytest.fixture
def redis_db() -> Iterator[redis.Redis]:
    yield from flushed_redis(REDIS_URL)


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Pacs]:
    if shutil.which("storescp") is None:
        pytest.fail("DCMTK storescp is required")
    server = Pacs(tmp_path / "pacs", free_port())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def recording_pacs() -> Iterator[RecordingPacs]:
    server = RecordingPacs()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def node_factory(tmp_path: Path, pacs: Pacs) -> Iterator[Callable[..., NodeUnderTest]]:
    nodes: list[NodeUnderTest] = []

    def build(
        broker_url: str = REDIS_URL,
        destination: Pacs | RecordingPacs | None = None,
        destination_options: dict[str, Any] | None = None,
        **jobs: Any,
    ) -> NodeUnderTest:
        node = NodeUnderTest(tmp_path / f"node{len(nodes)}", destination or pacs, broker_url)
        node.root.mkdir()
        node.write_config(destination_options, **jobs)
        nodes.append(node)
        return node

    try:
        yield build
    finally:
        for node in nodes:
            node.stop()


from tests.jobs.shipped_ct import shipped_ct_run  # noqa: E402, F401  (the session's shipped-config run)
