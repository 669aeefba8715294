"""Outbound TLS: a destination with ``tls = true`` gets its results over TLS, or not at all.

The PACS is DCMTK ``storescp +tls`` requiring a client certificate; the node runs embedded (serve with
its worker, no Redis) and analyses with the fixed-cost test pipeline, so only the delivery is under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.jobs.conftest import Pacs, make_ct_study, wait_for
from tests.jobs.fixed_pipeline import result_uids
from tests.pki import make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second CA that signed nothing the PACS presents."""
    return make_pki(tmp_path_factory.mktemp("other-pki")) / "ca.crt"


def tls_pacs(pacs: Pacs, pki: Path) -> None:
    """storescp over TLS only, demanding a client certificate signed by the test CA."""
    pacs.start(
        "+tls", str(pki / "server.key"), str(pki / "server.crt"), "+cf", str(pki / "ca.crt"),
        "--require-peer-cert",
    )  # fmt: skip


def client_tls(pki: Path, ca: Path | None = None) -> dict[str, object]:
    return {
        "tls": True,
        "ca_certificates": str(ca or pki / "ca.crt"),
        "certificate": str(pki / "client.crt"),
        "private_key": str(pki / "client.key"),
    }


def _delivery(node) -> dict[str, object]:
    jobs = json.loads(node.cli("jobs", "--json").stdout)["jobs"]
    deliveries = [d for job in jobs for d in job["deliveries"]]
    return deliveries[0] if deliveries else {}


def _send_study(node, tmp_path: Path) -> str:
    node.serve(worker=True)
    study_uid, files = make_ct_study(tmp_path / "study")
    node.send(files)
    return result_uids(study_uid)[1]


def test_results_reach_a_tls_pacs_with_a_client_certificate(tmp_path, pacs, node_factory, pki):
    tls_pacs(pacs, pki)
    node = node_factory(broker_url="", destination_options=client_tls(pki))
    expected = _send_study(node, tmp_path)
    wait_for(lambda: expected in pacs.received(), 90, f"the SR at the TLS PACS\n{node.log('serve.log')}")
    wait_for(lambda: _delivery(node).get("state") == "delivered", 20, "the delivery row")
    assert pacs.received() == [expected]


def test_a_wrong_ca_fails_the_delivery_visibly_and_sends_nothing(tmp_path, pacs, node_factory, pki, other_ca):
    tls_pacs(pacs, pki)
    node = node_factory(broker_url="", destination_options=client_tls(pki, ca=other_ca))
    _send_study(node, tmp_path)
    wait_for(lambda: "certificate verify failed" in str(_delivery(node).get("error")), 90,
             f"the delivery's error\n{node.log('serve.log')}")  # fmt: skip
    assert pacs.received() == []
    assert _delivery(node)["state"] in {"pending", "sending", "failed"}


def test_a_tls_destination_never_falls_back_to_clear_text(tmp_path, pacs, node_factory, pki):
    pacs.start()  # a plain-TCP peer that would accept anything sent in clear text
    node = node_factory(broker_url="", destination_options=client_tls(pki))
    _send_study(node, tmp_path)
    wait_for(lambda: "over TLS" in str(_delivery(node).get("error")), 90,
             f"the delivery's error\n{node.log('serve.log')}")  # fmt: skip
    assert pacs.received() == []
