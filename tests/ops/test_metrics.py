"""Metrics observed where the work finishes, summed over the node's processes, scraped over HTTP.

A real ``dicom-node serve --metrics-port`` with its embedded worker receives a study from DCMTK's
storescu, a duplicate, a refused instance and a refused association from pynetdicom; the job runs in
the worker's pool process and its result reaches a DCMTK storescp. Its counters and histograms show on
serve's ``/metrics``, and retention deleting the images does not make the received counter go down.
A ``dicom-node worker --metrics-port`` (a worker on another host) serves its own work.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from sqlalchemy import func, select

from dicom_node.index.models import Delivery, DeliveryState, Instance, Job
from tests.jobs.conftest import free_port, make_ct_study, port_open, stop_process, wait_for
from tests.jobs.fixed_pipeline import result_uids

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def _delivered(node) -> bool:
    database = node.database()
    try:
        with database.sessions() as session:
            return session.scalar(select(Delivery.state)) == DeliveryState.DELIVERED
    finally:
        database.dispose()


def _refused_by_the_node(port: int) -> tuple[int, bool]:
    """A C-STORE without a Study Instance UID (refused 0xA900), then an association to a wrong AE."""
    ae = AE(ae_title="METRICS")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="NODE")
    assert assoc.is_established
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
    ds.SeriesInstanceUID, ds.Modality = generate_uid(), "CT"
    status = assoc.send_c_store(ds)
    assoc.release()
    wrong = ae.associate("127.0.0.1", port, ae_title="NOT-THE-NODE")
    return int(status.Status), wrong.is_rejected


def test_serve_sums_the_work_of_its_processes_and_the_received_counter_never_goes_down(
    tmp_path, pacs, node_factory
):
    pacs.start()
    node = node_factory(broker_url="")  # the embedded worker and the filesystem broker
    metrics_port = free_port()
    serve = node._start(["serve", "--metrics-port", str(metrics_port)], "serve.log")
    wait_for(
        lambda: (port_open(node.port) and port_open(metrics_port)) or serve.poll() is not None,
        60,
        "the node and its metrics to listen",
    )
    assert serve.poll() is None, node.log("serve.log")

    study_uid, files = make_ct_study(tmp_path / "study")
    node.send(files)
    node.send(files[:1])  # the same bytes again
    assert _refused_by_the_node(node.port) == (0xA900, True)
    wait_for(lambda: result_uids(study_uid)[1] in pacs.received(), 90, f"the SR\n{node.log('serve.log')}")
    wait_for(lambda: _delivered(node), 20, "the delivery row")

    samples = wait_for(
        lambda: (
            (s := scrape(metrics_port))
            and value(s, "dicom_node_deliveries_finished_total", destination="pacs", outcome="delivered")
            and s
        ),
        20,
        "the delivery in /metrics",
    )
    received = "dicom_node_received_instances_total"
    assert value(samples, received, outcome="stored", source="received") == 3
    assert value(samples, received, outcome="duplicate", source="received") == 1
    assert value(samples, received, outcome="stored", source="result") == 1  # stored by the worker
    refused = "dicom_node_refused_instances_total"
    assert value(samples, refused, status="0xA900", reason="invalid_identifier") == 1
    assert value(samples, "dicom_node_refused_associations_total", reason="called_ae_title") == 1
    assert value(samples, "dicom_node_jobs_finished_total", pipeline="fixed-cost", outcome="succeeded") == 1
    for stage in ("queued", "waiting", "analysis", "delivery"):
        assert value(samples, "dicom_node_stage_seconds_count", stage=stage) == 1, stage
        assert value(samples, "dicom_node_stage_seconds_bucket", stage=stage, le="+Inf") == 1, stage
    assert (value(samples, "dicom_node_stage_seconds_sum", stage="analysis") or 0) >= 0.2
    inference = {"pipeline": "fixed-cost", "stage": "inference"}
    assert value(samples, "dicom_node_analysis_stage_seconds_count", **inference) == 1
    assert (value(samples, "dicom_node_analysis_stage_seconds_sum", **inference) or 0) >= 0.2
    assert value(samples, "dicom_node_delivery_attempts_total", destination="pacs") == 1
    assert value(samples, "dicom_node_delivery_failures_total", destination="pacs") is None
    assert value(samples, "dicom_node_deliveries", state="pending") == 0
    assert value(samples, "dicom_node_deliveries", state="sending") == 0
    assert value(samples, "dicom_node_queue_depth", queue="gpu") == 0
    assert not [key for key in samples if key[0] == "dicom_node_jobs"]  # nothing queued or running

    # The job ran in the worker's pool process, and /metrics read that process's file.
    database = node.database()
    with database.sessions() as session:
        job = session.scalar(select(Job))
        assert job is not None and not job.worker_host.endswith(f":{serve.pid}")
    pids = {path.stem.rsplit("_", 1)[1] for path in (node.data_dir / "metrics").glob("*.db")}
    assert str(serve.pid) in pids and job.worker_host.rsplit(":", 1)[1] in pids

    time.sleep(1.5)  # retention counts from the delivery: 0.00001 days is under a second
    purge = node.cli("retention", "--apply", "--days", "0.00001", "--json")
    assert purge.returncode == 0, purge.stderr
    assert json.loads(purge.stdout)["deleted"]["instances"] == 3
    with database.sessions() as session:
        assert session.scalar(select(func.count(Instance.id))) == 1  # only the SR is left
    database.dispose()
    after = scrape(metrics_port)
    assert value(after, received, outcome="stored", source="received") == 3


def test_a_worker_on_another_host_serves_its_own_metrics(tmp_path: Path, pacs, node_factory):
    pacs.start()
    node = node_factory(broker_url="")
    node.serve()  # --no-worker: the work runs in the separate worker below
    scratch = tmp_path / "worker-tmp"
    scratch.mkdir()
    metrics_port = free_port()
    worker = node._start(
        ["worker", "--metrics-port", str(metrics_port)],
        "worker.log",
        TMPDIR=str(scratch),
        DICOM_NODE_TEST_PIPELINE_SECONDS="0.05",
    )
    wait_for(lambda: port_open(metrics_port) or worker.poll() is not None, 60, "the worker's metrics")
    assert worker.poll() is None, node.log("worker.log")
    study_uid, files = make_ct_study(tmp_path / "study")
    node.send(files)
    wait_for(lambda: result_uids(study_uid)[1] in pacs.received(), 90, f"the SR\n{node.log('worker.log')}")

    samples = wait_for(
        lambda: (
            (s := scrape(metrics_port))
            and value(s, "dicom_node_deliveries_finished_total", destination="pacs", outcome="delivered")
            and s
        ),
        20,
        "the delivery in the worker's /metrics",
    )
    assert value(samples, "dicom_node_jobs_finished_total", pipeline="fixed-cost", outcome="succeeded") == 1
    assert value(samples, "dicom_node_received_instances_total", outcome="stored", source="result") == 1
    # Received instances are serve's, and the index gauges are serve's alone (no double counting).
    assert value(samples, "dicom_node_received_instances_total", outcome="stored", source="received") is None
    assert not [key for key in samples if key[0] in {"dicom_node_jobs", "dicom_node_deliveries"}]
    folders = list(scratch.glob("dicom-node-metrics-*"))
    assert len(folders) == 1 and list(folders[0].glob("*.db"))
    stop_process(worker)
    assert worker.returncode == 0, node.log("worker.log")
    assert not list(scratch.glob("dicom-node-metrics-*"))  # a temporary folder is removed at exit


def test_the_cli_imports_prometheus_client_only_once_the_metrics_folder_is_chosen(monkeypatch, tmp_path):
    # prometheus_client picks file-backed values when first imported: `serve` and `worker` choose the
    # folder after their command line is parsed, so importing the CLI must not import it.
    code = "import sys, dicom_node.cli.app; sys.exit('prometheus_client' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr or "importing dicom_node.cli.app imported prometheus_client"

    from dicom_node.ops.multiprocess import MULTIPROC_ENV, use_metrics_folder

    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    with pytest.raises(RuntimeError, match="imported before the metrics folder"):
        use_metrics_folder(tmp_path / "metrics")  # too late in this process: it is imported
