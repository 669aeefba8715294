"""The deploy files are valid: ``docker-compose config`` accepts the compose file, ``systemd-analyze verify``
accepts the units, and the settings files they mount load and route.

Both tools run without a daemon: Debian's ``docker-compose`` (1.29) only parses, and ``systemd-analyze
verify`` loads unit files offline. It does check that each ``ExecStart`` binary exists, so the units are
verified as copies whose install prefix (``/opt/dicom-node/venv``) points at this checkout's venv.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dicom_node.config import load_settings
from dicom_node.workflow.routing import compile_routes

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
INSTALLED = "/opt/dicom-node/venv/bin/dicom-node"


def _compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose is not installed (scripts/setup --test installs Debian's package)")
    return subprocess.run(
        [tool, "-f", str(DEPLOY / "compose.yaml"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "POSTGRES_PASSWORD": "test-only", **(env or {})},
        cwd=DEPLOY,
    )


def _yaml_to_json(text: str) -> dict[str, Any]:
    """Parse YAML with docker-compose's own interpreter (it depends on PyYAML; our venv does not)."""
    tool = shutil.which("docker-compose")
    assert tool is not None
    shebang = Path(tool).read_text().splitlines()[0].removeprefix("#!").split()
    converted = subprocess.run(
        [*shebang, "-c", "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    document: dict[str, Any] = json.loads(converted.stdout)
    return document


def test_compose_file_validates_with_every_profile() -> None:
    result = _compose("--profile", "demo", "--profile", "gpu2", "config", "--services")
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == {
        "redis",
        "postgres",
        "migrate",
        "node",
        "worker-io",
        "worker-gpu0",
        "worker-gpu1",
        "orthanc",
    }


def test_compose_services_are_wired_as_the_design_says() -> None:
    result = _compose("--profile", "demo", "config")
    assert result.returncode == 0, result.stderr
    services = _yaml_to_json(result.stdout)["services"]
    assert services["node"]["command"][:2] == ["serve", "--no-worker"]
    assert services["worker-io"]["command"][:3] == ["worker", "--queues", "io"]
    for name in ("worker-gpu0", "worker-gpu1"):
        gpu = services[name]
        assert gpu["command"][:3] == ["worker", "--queues", "gpu"]
        (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert services["worker-gpu0"]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == ["0"]
    assert "--appendonly" in services["redis"]["command"]
    for name, service in services.items():
        if name != "migrate":
            assert service["restart"] == "unless-stopped", name
            assert "healthcheck" in service, name
    workers = [s for n, s in services.items() if n == "node" or n.startswith("worker")]
    for service in workers:
        env = service["environment"]
        assert env["DICOM_NODE_BROKER_URL"].startswith("redis://redis:6379")
        assert env["DICOM_NODE_DATABASE_URL"].startswith("postgresql+psycopg://")
        mounts = (
            {v["target"]: v for v in service["volumes"]} if isinstance(service["volumes"][0], dict) else {}
        )
        targets = mounts or {v.split(":")[1]: v for v in service["volumes"]}
        assert "/var/lib/dicom-node" in targets and "/models" in targets
        models = targets["/models"]
        assert (models.get("read_only") is True) if isinstance(models, dict) else models.endswith(":ro")


def test_compose_refuses_to_run_without_a_database_password(tmp_path: Path) -> None:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose is not installed")
    env = {k: v for k, v in os.environ.items() if k != "POSTGRES_PASSWORD"}
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = subprocess.run(
        [tool, "-f", str(DEPLOY / "compose.yaml"), "--env-file", str(empty), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=DEPLOY,
    )
    assert result.returncode != 0 and "POSTGRES_PASSWORD" in result.stderr


@pytest.mark.parametrize("name", ["node.toml", "demo.toml"])
def test_mounted_settings_files_load_and_route(name: str) -> None:
    settings = load_settings(DEPLOY / "config" / name, environ={})
    compile_routes(settings.routes)
    if name == "demo.toml":
        assert [(d.name, d.host, d.port) for d in settings.destinations] == [("orthanc", "orthanc", 4242)]


def test_env_example_names_only_known_settings() -> None:
    from dicom_node.config import Settings

    for path in (DEPLOY / ".env.example", DEPLOY / "systemd" / "dicom-node.env.example"):
        settings_env: dict[str, str] = {}
        for line in path.read_text().splitlines():
            match = re.match(r"^(DICOM_NODE_[A-Z_]+)=(.*)$", line)
            if match and match.group(1) not in {
                "DICOM_NODE_CONFIG",
                "DICOM_NODE_CONFIG_FILE",
                "DICOM_NODE_DATA_PATH",
                "DICOM_NODE_MODELS_PATH",
                "DICOM_NODE_IMAGE",
                "DICOM_NODE_CUDA_IMAGE",
                "DICOM_NODE_METRICS_PORT",
            }:
                key = match.group(1).removeprefix("DICOM_NODE_").lower().split("__")[0]
                assert key in Settings.model_fields, f"{path.name}: {match.group(1)} is not a setting"
                settings_env[match.group(1)] = match.group(2)
        # And the example values themselves load.
        load_settings(environ=settings_env)


def _units(tmp_path: Path) -> list[str]:
    """Copies of the units with the install prefix pointing at this venv; returns the names to verify."""
    executable = Path(sys.executable).with_name("dicom-node")
    if not executable.exists():
        pytest.skip(f"{executable} is missing (pip install -e . installs the console script)")
    for unit in (DEPLOY / "systemd").iterdir():
        if unit.suffix in {".service", ".timer"}:
            (tmp_path / unit.name).write_text(unit.read_text().replace(INSTALLED, str(executable)))
    template = (tmp_path / "dicom-node-worker@.service").read_text()
    # Instances as an operator would start them (a template alone is not verifiable).
    for instance in ("io", "gpu", "gpu-0", "gpu-1"):
        (tmp_path / f"dicom-node-worker@{instance}.service").write_text(template)
    return sorted(p.name for p in tmp_path.iterdir() if "@." not in p.name)


def test_systemd_units_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    names = _units(tmp_path)
    assert {"dicom-node.service", "dicom-node-worker@gpu-0.service", "dicom-node-retention.timer"} <= set(
        names
    )
    result = subprocess.run(
        [tool, "verify", *names], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    # Unrelated host noise (e.g. "Couldn't process aliases") goes to stderr without failing; any
    # complaint that names one of our units is a failure.
    complaints = [line for line in result.stderr.splitlines() if "dicom-node" in line]
    assert result.returncode == 0 and not complaints, result.stderr


def test_units_are_hardened() -> None:
    for name in ("dicom-node.service", "dicom-node-worker@.service", "dicom-node-retention.service"):
        text = (DEPLOY / "systemd" / name).read_text()
        for option in (
            "ProtectSystem=strict",
            "ReadWritePaths=/var/lib/dicom-node",
            "NoNewPrivileges=yes",
            "PrivateTmp=yes",
            "EnvironmentFile=/etc/dicom-node/dicom-node.env",
            "User=dicom-node",
        ):
            assert option in text, f"{name} lacks {option}"


def test_systemd_security_exposure_is_low(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    _units(tmp_path)
    result = subprocess.run(
        [tool, "security", "--offline=yes", "dicom-node.service"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    if "--offline" in result.stderr or "unrecognized option" in result.stderr:
        pytest.skip(f"this systemd-analyze has no offline security check: {result.stderr.strip()}")
    match = re.search(r"Overall exposure level for dicom-node.service: ([0-9.]+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    # systemd rates 0-10; below 2 is "OK" (a service with no hardening scores about 9.6).
    assert float(match.group(1)) < 2.0, result.stdout
