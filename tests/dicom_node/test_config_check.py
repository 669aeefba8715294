"""``dicom-node config check`` and the commands that refuse to start on the same problems (real processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-c", "from dicom_node.cli.app import main; main()"]

THREE_PROBLEMS = """\
ae_title = "NODE"

[acess]
allowed_ae_titles = ["CT1"]

[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "10.1.2.3"
port = 104
profile = "fancy"

[[routes]]
pipeline = "ct-lung-nodules"
quiet_period = "2m"
[routes.match]
modality = "CT"
"""


def _good(tmp_path: Path) -> str:
    key = tmp_path / "server.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\nnot-a-real-key-but-secret\n-----END PRIVATE KEY-----\n")
    (tmp_path / "server.crt").write_text("certificate\n")
    return f"""\
ae_title = "NODE"
data_dir = "{tmp_path / "var"}"
database_url = "postgresql+psycopg://node:s3cret-pw@db.example.org:5432/node"
broker_url = "redis://:broker-pw@redis:6379/0"

[access]
allowed_networks = ["10.0.0.0/8"]

[tls]
certificate = "{tmp_path / "server.crt"}"
private_key = "{key}"

[jobs]
max_attempts = 5

[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "pacs.example.org"
port = 104
profile = "ohif"

[[routes]]
pipeline = "ct-lung-nodules"
quiet_period = 120
[routes.match]
modality = "CT"
slice_thickness = "<= 3"
"""


def _env(**changes: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_NODE_")}
    env.update(changes)
    return env


def _run(args: list[str], cwd: Path, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def three_problems(tmp_path: Path) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(THREE_PROBLEMS)
    return path


def test_config_check_names_all_three_problems(three_problems: Path, tmp_path: Path):
    result = _run(["config", "check", "--config", str(three_problems)], tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    assert result.stderr == (
        f"configuration error: 3 problems in {three_problems}:\n"
        "  - destinations[0].profile: unknown report profile 'fancy'; one of standard, ohif, labelmap\n"
        "  - routes[0] (ct-lung-nodules).quiet_period: expected a number of seconds, e.g. 120, got '2m'\n"
        "  - acess: unknown section; did you mean 'access'?\n"
    )


def test_serve_and_worker_refuse_to_start_with_the_same_message(three_problems: Path, tmp_path: Path):
    check = _run(["config", "check", "--config", str(three_problems)], tmp_path)
    serve = _run(["serve", "--config", str(three_problems), "--port", "0"], tmp_path)
    assert serve.returncode == 2 and serve.stderr == check.stderr
    worker = _run(["worker", "--config", str(three_problems)], tmp_path)
    assert worker.returncode == 2 and worker.stderr == check.stderr
    # The embedded worker `serve` starts reads the same file through DICOM_NODE_CONFIG.
    embedded = subprocess.run(
        [sys.executable, "-m", "dicom_node.jobs.worker"],
        cwd=tmp_path,
        env=_env(DICOM_NODE_CONFIG=str(three_problems)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert embedded.returncode == 2 and embedded.stderr == check.stderr
    assert not (tmp_path / "var").exists()


def test_a_good_file_prints_the_effective_settings_and_their_origins(tmp_path: Path):
    config = tmp_path / "node.toml"
    config.write_text(_good(tmp_path))
    result = _run(["config", "check", "--config", str(config), "--json"], tmp_path, DICOM_NODE_PORT="4242")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["config_file"] == str(config)
    settings = document["settings"]
    assert settings["ae_title"] == {"value": "NODE", "source": "file", "origin": str(config)}
    assert settings["port"] == {"value": 4242, "source": "env", "origin": "DICOM_NODE_PORT"}
    assert settings["host"] == {"value": "0.0.0.0", "source": "default", "origin": None}
    assert settings["jobs.max_attempts"]["value"] == 5 and settings["jobs.max_attempts"]["source"] == "file"
    assert settings["jobs.running_lease"] == {"value": 120.0, "source": "default", "origin": None}
    assert settings["access.allowed_networks"]["value"] == ["10.0.0.0/8"]
    assert settings["tls.private_key"]["value"] == str(tmp_path / "server.key")
    assert settings["destinations"]["value"][0]["profile"] == "ohif"
    route = settings["routes"]["value"][0]
    assert (route["quiet_period"], route["match"]["slice_thickness"]) == (120.0, "<= 3")
    # Secrets redacted; the key file named, its contents never shown.
    assert settings["database_url"]["value"] == "postgresql+psycopg://node:***@db.example.org:5432/node"
    assert settings["broker_url"]["value"] == "redis://:***@redis:6379/0"
    for secret in ("s3cret-pw", "broker-pw", "not-a-real-key-but-secret"):
        assert secret not in result.stdout + result.stderr

    table = _run(
        ["config", "check", "--config", str(config)], tmp_path, DICOM_NODE_PORT="4242", COLUMNS="200"
    )
    assert table.returncode == 0, table.stderr
    assert "env DICOM_NODE_PORT" in table.stdout and "4242" in table.stdout
    assert "ct-lung-nodules (thinnest): modality CT; slice_thickness <= 3; quiet_period 120 s" in table.stdout
    assert "pacs: PACS@pacs.example.org:104 (ohif)" in table.stdout
    assert "***" in table.stdout and "s3cret-pw" not in table.stdout


def test_defaults_only_and_a_misspelt_variable(tmp_path: Path):
    result = _run(
        ["config", "check", "--json"], tmp_path, DICOM_NODE_QUIET_PERIDO="5", DICOM_NODE_LOG_LEVEL="debug"
    )
    assert result.returncode == 0, result.stderr
    settings = json.loads(result.stdout)["settings"]
    assert settings["quiet_period"] == {"value": 30.0, "source": "default", "origin": None}
    assert settings["log_level"] == {"value": "DEBUG", "source": "env", "origin": "DICOM_NODE_LOG_LEVEL"}
    assert [r["pipeline"] for r in settings["routes"]["value"]] == [
        "cxr-classification",
        "ct-lung-nodules",
        "ct-vertebrae",
    ]
    assert settings["database_url"]["value"].startswith("sqlite:///")
    assert (
        "note: DICOM_NODE_QUIET_PERIDO is not a setting and is ignored; did you mean DICOM_NODE_QUIET_PERIOD?"
        in result.stderr
    )


def test_a_missing_file_and_a_bad_variable_exit_2(tmp_path: Path):
    missing = _run(["config", "check", "--config", str(tmp_path / "absent.toml")], tmp_path)
    assert missing.returncode == 2
    assert f"configuration error: config file {tmp_path / 'absent.toml'} does not exist" in missing.stderr
    variable = _run(["config", "check"], tmp_path, DICOM_NODE_MAX_STUDY_AGE="6h")
    assert variable.returncode == 2
    assert variable.stderr == (
        "configuration error: DICOM_NODE_MAX_STUDY_AGE: expected a number of seconds, e.g. 21600, got '6h'\n"
    )
