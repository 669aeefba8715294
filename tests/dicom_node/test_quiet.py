"""pynetdicom's standard logging handlers stay bound exactly while their lines would be kept."""

from __future__ import annotations

import logging

import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.association import Association

from dicom_node.edge.quiet import STANDARD_HANDLERS, drop_unheard_log_handlers
from tests.factories import ct_slice, nodelay


def _bound(assoc: Association) -> set[str]:
    return {
        event.name
        for event, handler in STANDARD_HANDLERS
        if any(bound is handler for bound, _ in assoc.get_handlers(event))
    }


@pytest.mark.parametrize(
    ("level", "kept"), [(logging.WARNING, False), (logging.INFO, True), (logging.DEBUG, True)]
)
def test_unbound_only_where_nothing_they_log_is_kept(level: int, kept: bool) -> None:
    logger = logging.getLogger("pynetdicom")
    before = logger.level
    logger.setLevel(level)
    try:
        assoc = Association(AE(), "acceptor")
        assert len(_bound(assoc)) == 4  # pynetdicom binds all four to every association
        drop_unheard_log_handlers(assoc)
        assert len(_bound(assoc)) == (4 if kept else 0)
    finally:
        logger.setLevel(before)


def test_a_node_logging_pynetdicom_at_info_still_gets_its_lines(make_settings, run_node, caplog) -> None:
    node = run_node(make_settings())
    caplog.set_level(logging.INFO, logger="pynetdicom")
    ae = AE(ae_title="PEER")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2")
    assoc = ae.associate("127.0.0.1", node.address[1], ae_title="DICOMNODE")
    assert assoc.is_established
    nodelay(assoc)
    dataset = ct_slice(0, study_uid=generate_uid(), series_uid=generate_uid(), frame_uid=generate_uid())
    assert assoc.send_c_store(dataset).Status == 0x0000
    assoc.release()
    assert any(r.getMessage() == "Received Store Request" for r in caplog.records)
