"""DICOM TLS: DCMTK's TLS storescu with a client certificate gets in; without one it does not."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from sqlalchemy import func, select

from dicom_node.config import TlsConfig
from dicom_node.index.models import Instance
from tests.conftest import require_tool
from tests.pki import make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throw-away CA with a server and a client certificate (RSA 2048, PEM)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def storescu_tls(port: int, pki: Path, *tls: str, files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            require_tool("storescu"),
            "-aec",
            "DICOMNODE",
            *tls,
            "+cf",
            str(pki / "ca.crt"),
            "-xv",
            "+sd",
            "127.0.0.1",
            str(port),
            str(files),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_tls_with_required_client_certificate(make_settings, run_node, pki, test_data):
    tls = TlsConfig(
        certificate=pki / "server.crt",
        private_key=pki / "server.key",
        ca_certificates=pki / "ca.crt",
        require_client_certificate=True,
    )
    node = run_node(make_settings(tls=tls))
    port = node.address[1]
    folder = test_data / "ct" / "totalseg_dicom"

    with_cert = storescu_tls(
        port, pki, "+tls", str(pki / "client.key"), str(pki / "client.crt"), files=folder
    )
    assert with_cert.returncode == 0, with_cert.stderr
    with node.database.sessions() as session:
        assert session.scalar(select(func.count(Instance.id))) == 20

    anonymous = storescu_tls(port, pki, "+tla", files=folder)
    assert anonymous.returncode != 0
    plain = subprocess.run(
        [require_tool("echoscu"), "-aec", "DICOMNODE", "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert plain.returncode != 0

    again = storescu_tls(port, pki, "+tls", str(pki / "client.key"), str(pki / "client.crt"), files=folder)
    assert again.returncode == 0, again.stderr


def test_tls_without_client_certificates(make_settings, run_node, pki, test_data):
    tls = TlsConfig(certificate=pki / "server.crt", private_key=pki / "server.key")
    node = run_node(make_settings(tls=tls))
    result = storescu_tls(node.address[1], pki, "+tla", files=test_data / "ct" / "totalseg_dicom")
    assert result.returncode == 0, result.stderr
