"""``--log-format json``: every line a real node writes to standard error is one JSON object.

A real ``dicom-node serve --log-format json`` with its embedded worker (at DEBUG, so the per-instance
store lines appear) receives a study from DCMTK's storescu; one instance names a Specific Character Set
pydicom does not know, so reading its description makes pydicom warn. The job's lines from the worker's
pool process, Celery's own lines and pydicom's warning are JSON too, UIDs and ids are fields, and the
patient's name and ID appear in no line above DEBUG.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from pydicom import dcmread
from pydicom.dataelem import DataElement
from typer.testing import CliRunner

from dicom_node.cli.app import app
from dicom_node.config import load_settings
from dicom_node.errors import ConfigError
from tests.jobs.conftest import CLI, make_ct_study, port_open, wait_for
from tests.jobs.fixed_pipeline import result_uids

PATIENT_NAME, PATIENT_ID = "Lovelace^Augusta^Ada", "PID-SECRET-1815"


def _records(path) -> list[dict]:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line on stderr: {line!r}")
    return records


def test_serve_and_its_worker_log_json_with_fields_and_no_patient_data(tmp_path, pacs, node_factory):
    pacs.start()
    node = node_factory(broker_url="")
    study_uid, files = make_ct_study(tmp_path / "study")
    sent = set()
    for index, path in enumerate(files):
        ds = dcmread(path)
        sent.add(str(ds.SOPInstanceUID))
        ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
        if index == 0:
            ds.SpecificCharacterSet = "ISO_IR 999"  # unknown to pydicom
            ds.add(DataElement(0x00081030, "LO", "Étude".encode("latin-1")))  # Study Description
            with pytest.warns(UserWarning, match="Unknown encoding 'ISO_IR 999'"):
                ds.save_as(path, enforce_file_format=True)
        else:
            ds.save_as(path, enforce_file_format=True)
    stderr = tmp_path / "serve.stderr"
    with (tmp_path / "serve.stdout").open("wb") as out, stderr.open("wb") as err:
        serve = subprocess.Popen(
            [*CLI, "serve", "--log-format", "json"],
            cwd=node.root,
            env={**node.env(), "DICOM_NODE_LOG_LEVEL": "DEBUG"},
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    node.processes.append(serve)
    wait_for(lambda: port_open(node.port) or serve.poll() is not None, 60, "the node to listen")
    assert serve.poll() is None, stderr.read_text()
    node.send(files)
    wait_for(
        lambda: result_uids(study_uid)[1] in pacs.received(), 90, f"the SR\n{stderr.read_text()[-3000:]}"
    )
    wait_for(
        lambda: any(r.get("delivery_id") and "objects to" in r["message"] for r in _records(stderr)),
        20,
        "the delivery's log line",
    )
    node.stop()

    assert not (tmp_path / "serve.stdout").read_text().strip()  # no banner: Celery's is left out
    records = _records(stderr)
    assert all({"timestamp", "level", "logger", "message", "process"} <= set(r) for r in records)
    stored = [
        r
        for r in records
        if r["logger"] == "dicom_node.storage.ingest"
        and r["process"] == serve.pid
        and r["outcome"] == "stored"
    ]
    assert {r["sop_instance_uid"] for r in stored} == sent
    assert all(r["study_instance_uid"] == study_uid and r["calling_ae"] == "MODALITY" for r in stored)
    started = [r for r in records if r["message"].startswith("dicom-node NODE listening on")]
    assert started and started[0]["process"] == serve.pid
    jobs = [r for r in records if r["logger"] == "dicom_node.jobs.analysis" and "job_id" in r]
    assert jobs and all(r["pipeline"] == "fixed-cost" and r["study_instance_uid"] == study_uid for r in jobs)
    assert {r["process"] for r in jobs} != {serve.pid}  # from the worker's pool process
    assert any(r["logger"].startswith("celery.") for r in records)  # Celery's own lines, as JSON
    warned = [r for r in records if r["logger"] == "pydicom" and r["level"] == "WARNING"]
    assert any("Unknown encoding 'ISO_IR 999'" in r["message"] for r in warned), warned
    above_debug = [json.dumps(r) for r in records if r["level"] != "DEBUG"]
    assert not [
        line for line in above_debug if PATIENT_NAME in line or "Lovelace" in line or PATIENT_ID in line
    ]


def test_log_format_is_validated_everywhere(tmp_path):
    with pytest.raises(ConfigError, match="DICOM_NODE_LOG_FORMAT"):
        load_settings(environ={"DICOM_NODE_LOG_FORMAT": "xml", "DICOM_NODE_DATA_DIR": str(tmp_path)})
    assert load_settings(environ={"DICOM_NODE_LOG_FORMAT": "JSON"}).log_format == "json"
    config = tmp_path / "node.toml"
    config.write_text('log_format = "yaml"\n')
    result = CliRunner().invoke(app, ["status", "--config", str(config)])
    assert result.exit_code == 2 and "log_format" in result.output
    result = CliRunner().invoke(app, ["serve", "--log-format", "xml", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "--log-format" in result.output
