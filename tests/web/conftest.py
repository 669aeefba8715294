"""A real ``dicom-node serve`` with DICOMweb on, a token file, and the shared CT sent to it by storescu."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.serving import free_port, stop_serve

REPO = Path(__file__).resolve().parents[2]
CT_DIR = REPO / "tests" / "data" / "ct" / "totalseg_dicom"
CLI = [sys.executable, "-c", "from dicom_node.cli.app import main; main()"]


@dataclass
class WebNode:
    """A serve process with DICOMweb: its URL, its tokens, its data dir and log."""

    root: Path
    dicom_port: int
    web_port: int
    tokens: dict[str, str]
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}/dicom-web"

    @property
    def data_dir(self) -> Path:
        return self.root / "var"

    @property
    def log_path(self) -> Path:
        return self.root / "serve.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def headers(self, name: str = "viewer") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[name]}"} if self.tokens else {}

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_NODE_")}
        env.update(
            PYTHONPATH=str(REPO),
            DICOM_NODE_DATA_DIR=str(self.data_dir),
            DICOM_NODE_QUIET_PERIOD="3600",
            DICOM_NODE_SHUTDOWN_GRACE="2",
            DICOM_NODE_LOG_LEVEL="INFO",
            DICOM_NODE_DICOMWEB__ENABLED="true",
            DICOM_NODE_DICOMWEB__PORT=str(self.web_port),
            DICOM_NODE_DICOMWEB__CORS_ORIGINS="http://viewer.example",
        )
        if self.tokens:
            env["DICOM_NODE_DICOMWEB__TOKEN_FILE"] = str(self.root / "tokens")
        env.update(extra)
        return env

    def start(self, probe: bool = True, **env: str) -> None:
        """Start serve; with ``probe``, wait until DICOMweb answers plain HTTP."""
        handle = self.log_path.open("ab")
        command = [*CLI, "serve", "--host", "127.0.0.1", "--port", str(self.dicom_port), "--no-worker"]
        self.process = subprocess.Popen(command, env=self.env(**env), stdout=handle, stderr=subprocess.STDOUT)
        handle.close()
        if probe:
            self._wait_for_http()

    def wait_for_port(self) -> None:
        """Wait until the DICOMweb port accepts connections (for HTTPS, where a plain probe fails)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"serve exited with {self.process.returncode}: {self.log()}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.web_port)) == 0:
                    return
            time.sleep(0.1)
        pytest.fail(f"DICOMweb did not listen: {self.log()}")

    def _wait_for_http(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"serve exited with {self.process.returncode}: {self.log()}")
            try:
                requests.get(self.url + "/studies", timeout=2)
                return
            except requests.ConnectionError:
                time.sleep(0.1)
        pytest.fail(f"DICOMweb did not listen: {self.log()}")

    def send(self, *paths: Path) -> None:
        result = subprocess.run(
            [
                "storescu",
                "-aec",
                "DICOMNODE",
                "-xv",
                "+sd",
                "127.0.0.1",
                str(self.dicom_port),
                *map(str, paths),
            ],
            env={**os.environ, "TCP_NODELAY": "1"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, *args], env=self.env(), capture_output=True, text=True, timeout=60, cwd=self.root
        )

    def stop(self) -> None:
        if self.process is not None:
            stop_serve(self.process)


def make_web_node(root: Path, *, tokens: bool = True) -> WebNode:
    """A node's folder; with ``tokens``, a token file naming ``viewer`` and ``MODALITY``."""
    root.mkdir(parents=True, exist_ok=True)
    if not tokens:
        return WebNode(root, free_port(), free_port(), {})
    named = {"viewer": secrets.token_urlsafe(24), "MODALITY": secrets.token_urlsafe(24)}
    (root / "tokens").write_text(
        "# name:token\n" + "".join(f"{name}:{token}\n" for name, token in named.items()), encoding="utf-8"
    )
    return WebNode(root, free_port(), free_port(), named)


@pytest.fixture(scope="module")
def web_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebNode]:
    """One node for the module, holding the shared 20-slice CT (JPEG 2000, as stored by storescu -xv)."""
    node = make_web_node(tmp_path_factory.mktemp("web"))
    node.start()
    try:
        node.send(CT_DIR)
        yield node
    finally:
        node.stop()
