"""Who may use DICOMweb: settings that would open it to the network are refused; the token file's
rules; ``[access]`` for HTTP (networks for every request, AE titles for STOW-RS); mutual TLS."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from pydantic import ValidationError
from pydicom import dcmread
from pydicom.uid import generate_uid

from dicom_node.config import DicomWebSettings
from dicom_node.errors import ConfigError
from dicom_node.web.auth import read_tokens
from tests.pki import make_pki
from tests.web.conftest import REPO, make_web_node
from tests.web.test_dicomweb import _part10

SEG = REPO / "tests" / "data" / "sr_seg" / "seg_image_ct_binary.dcm"


def test_an_open_listener_off_loopback_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"not loopback: set dicomweb\.token_file"):
        DicomWebSettings(enabled=True, host="0.0.0.0")
    tokens = tmp_path / "tokens"
    tokens.write_text("viewer:" + "x" * 20 + "\n")
    assert DicomWebSettings(enabled=True, host="0.0.0.0", token_file=tokens).host == "0.0.0.0"
    assert DicomWebSettings(host="0.0.0.0").enabled is False  # off: nothing listens


def test_token_file_rules(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# comment\n\nviewer:abcdefghijklmnop1\nabcdefghijklmnop2\n")
    assert read_tokens(path) == {"abcdefghijklmnop1": "viewer", "abcdefghijklmnop2": "token4"}
    for text, message in (
        ("viewer:short\n", "16 characters"),
        ("a:abcdefghijklmnop1\na:abcdefghijklmnop2\n", "given twice"),
        ("# nothing\n", "holds no token"),
    ):
        path.write_text(text)
        with pytest.raises(ConfigError, match=message):
            read_tokens(path)


def _stow(url: str, headers: dict[str, str]) -> requests.Response:
    ds = dcmread(SEG)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (
        generate_uid(),
        generate_uid(),
        generate_uid(),
    )
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    body = b"--x\r\nContent-Type: application/dicom\r\n\r\n" + _part10(ds) + b"\r\n--x--\r\n"
    content_type = 'multipart/related; type="application/dicom"; boundary=x'
    return requests.post(
        url + "/studies", data=body, headers={**headers, "Content-Type": content_type}, timeout=30
    )


def test_access_rules_apply_to_http(tmp_path: Path) -> None:
    node = make_web_node(tmp_path / "names")
    node.start(DICOM_NODE_ACCESS__ALLOWED_AE_TITLES="MODALITY")
    try:
        refused = _stow(node.url, node.headers("viewer"))
        assert refused.status_code == 403, refused.text
        assert "allowed_ae_titles" in refused.json()["error"]
        assert _stow(node.url, node.headers("MODALITY")).status_code == 200
        # Searching is open to every authenticated caller.
        assert requests.get(node.url + "/studies", headers=node.headers(), timeout=10).status_code == 200
    finally:
        node.stop()
    outside = make_web_node(tmp_path / "networks")
    outside.start(DICOM_NODE_ACCESS__ALLOWED_NETWORKS="10.0.0.0/8")
    try:
        response = requests.get(outside.url + "/studies", headers=outside.headers(), timeout=10)
        assert response.status_code == 403
        assert "allowed_networks" in response.json()["error"]
        assert "GET /dicom-web/studies 403" in outside.log()
    finally:
        outside.stop()


def test_mutual_tls(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    node = make_web_node(tmp_path / "tls", tokens=False)
    tls = {
        "DICOM_NODE_DICOMWEB__TLS__CERTIFICATE": str(pki / "server.crt"),
        "DICOM_NODE_DICOMWEB__TLS__PRIVATE_KEY": str(pki / "server.key"),
        "DICOM_NODE_DICOMWEB__TLS__CA_CERTIFICATES": str(pki / "ca.crt"),
        "DICOM_NODE_DICOMWEB__TLS__REQUIRE_CLIENT_CERTIFICATE": "true",
    }
    url = node.url.replace("http://", "https://")
    node.start(probe=False, **tls)
    try:
        node.wait_for_port()
        answer = requests.get(
            url + "/studies",
            cert=(str(pki / "client.crt"), str(pki / "client.key")),
            verify=str(pki / "ca.crt"),
            timeout=10,
        )
        assert answer.status_code == 200 and answer.json() == []
        with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
            requests.get(url + "/studies", verify=str(pki / "ca.crt"), timeout=10)
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(url + "/studies", timeout=10)  # the node's certificate is not one the system trusts
        assert "tls-client" in node.log()
    finally:
        node.stop()
