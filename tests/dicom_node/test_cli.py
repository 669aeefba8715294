"""The administrator's CLI against a real running node."""

from __future__ import annotations

import json

from sqlalchemy import func, select
from typer.testing import CliRunner

from dicom_node.cli.app import app
from dicom_node.index.models import Instance
from tests.factories import write_ct_series
from tests.jobs.conftest import wait_for

runner = CliRunner()


def env_for(node) -> dict[str, str]:
    return {"DICOM_NODE_DATA_DIR": str(node.settings.data_dir), "DICOM_NODE_DATABASE_URL": node.database.url}


def test_echo_success_and_failure(make_settings, run_node):
    node = run_node(make_settings())
    ok = runner.invoke(app, ["echo", f"DICOMNODE@127.0.0.1:{node.address[1]}"], env=env_for(node))
    assert ok.exit_code == 0, ok.output
    assert "success" in ok.stdout
    refused = runner.invoke(app, ["echo", f"WRONGAE@127.0.0.1:{node.address[1]}"], env=env_for(node))
    assert refused.exit_code == 1
    assert "rejected" in refused.output
    node.stop()
    down = runner.invoke(app, ["echo", f"DICOMNODE@127.0.0.1:{node.address[1]}"])
    assert down.exit_code == 1
    assert "could not connect" in down.output


def test_echo_usage_error(tmp_path):
    result = runner.invoke(app, ["echo", "nonsense"], env={"DICOM_NODE_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 2
    assert "AE@HOST:PORT" in result.output


def test_send_folder_then_status_and_studies(make_settings, run_node, tmp_path):
    node = run_node(make_settings())
    write_ct_series(tmp_path / "ct", 12, rows=32, columns=32)
    (tmp_path / "ct" / "README.txt").write_text("not DICOM")
    result = runner.invoke(
        app,
        ["send", str(tmp_path / "ct"), "--to", f"DICOMNODE@127.0.0.1:{node.address[1]}"],
        env=env_for(node),
    )
    assert result.exit_code == 1  # one file was skipped, and the CLI says so
    assert "sent 12 of 12" in result.stdout
    assert "README.txt" in result.output

    status = runner.invoke(app, ["status", "--json"], env=env_for(node))
    assert status.exit_code == 0, status.output
    document = json.loads(status.stdout)
    with node.database.sessions() as session:
        assert document["instances"] == session.scalar(select(func.count(Instance.id))) == 12
    assert document["studies"]["total"] == 1

    audit = runner.invoke(app, ["audit", "--json"], env=env_for(node))
    records = json.loads(audit.stdout)["associations"]
    assert records[0]["instances_accepted"] == 12 and records[0]["calling_ae_title"] == "DICOMNODE"


def test_db_upgrade_is_idempotent(tmp_path, database_url):
    env = {"DICOM_NODE_DATA_DIR": str(tmp_path), "DICOM_NODE_DATABASE_URL": database_url}
    for _ in range(2):
        result = runner.invoke(app, ["db", "upgrade"], env=env)
        assert result.exit_code == 0, result.output
        assert "schema revision" in result.stdout


def test_bad_configuration_is_a_usage_error(tmp_path):
    config = tmp_path / "node.toml"
    config.write_text('ae_title = "MUCH_TOO_LONG_AE_TITLE"\n')
    result = runner.invoke(app, ["status", "--config", str(config)])
    assert result.exit_code == 2
    assert "ae_title" in result.output


def test_studies_say_why_a_study_started_no_job(make_settings, run_node, tmp_path):
    # run_jobs: the reconciler routes the complete study (embedded broker; no worker is needed to route).
    node = run_node(make_settings(), run_jobs=True)
    write_ct_series(tmp_path / "ct", 3, rows=32, columns=32)  # a chest CT far too short for any route
    sent = runner.invoke(
        app,
        ["send", str(tmp_path / "ct"), "--to", f"DICOMNODE@127.0.0.1:{node.address[1]}"],
        env=env_for(node),
    )
    assert sent.exit_code == 0, sent.output

    def routed() -> dict | None:
        listed = runner.invoke(app, ["studies", "--json"], env=env_for(node))
        assert listed.exit_code == 0, listed.output
        study = json.loads(listed.stdout)["studies"][0]
        return study if study["routing_reason"] else None

    study = wait_for(routed, 30, "the study to be routed")
    reason = study["routing_reason"]
    assert study["state"] == "complete" and reason.startswith("no route matched")
    for pipeline, why in (
        ("cxr-classification", "modality CT not in ['CR', 'DX']"),
        ("ct-lung-nodules", "num_instances 3"),
        ("ct-vertebrae", "extent_mm"),
    ):
        assert f"{pipeline}: series 2: " in reason and why in reason, (pipeline, reason)

    # The table's output says it too, on a line of its own under the table.
    table = runner.invoke(app, ["studies"], env=env_for(node))
    assert table.exit_code == 0, table.output
    assert f"no job for {study['study_instance_uid']}: {reason}\n" in table.stdout, table.stdout
