"""pynetdicom's standard logging handlers stay on an association only while what they log is kept.

pynetdicom binds four of them to every association (``_config.LOG_HANDLER_LEVEL``): one event per PDU
received and sent and per DIMSE message received and sent, each an ``Event`` made under the
association's lock, and for a C-STORE request lines formatted from its command set. They log at INFO
and DEBUG only, and the node keeps pynetdicom's records from WARNING up unless it runs at DEBUG
(``ops/logging.py``), so outside debugging all that work is thrown away. Measured with
``bench/ingest_profile.py`` (py-spy, one association, 600 slices, 2026-12-03): 8 % of the GIL's samples
of ``serve`` were ``standard_dimse_recv_handler``.
"""

from __future__ import annotations

import logging

from pynetdicom import evt
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.association import Association

# The logger those handlers write to: INFO is the most severe level any of them uses.
HANDLERS_LOG = logging.getLogger("pynetdicom._handlers")

STANDARD_HANDLERS = (
    (evt.EVT_DIMSE_RECV, standard_dimse_recv_handler),
    (evt.EVT_DIMSE_SENT, standard_dimse_sent_handler),
    (evt.EVT_PDU_RECV, standard_pdu_recv_handler),
    (evt.EVT_PDU_SENT, standard_pdu_sent_handler),
)


def drop_unheard_log_handlers(assoc: Association) -> None:
    """Unbind pynetdicom's standard logging handlers from ``assoc`` if none of their lines would be kept."""
    if HANDLERS_LOG.isEnabledFor(logging.INFO):
        return
    for event, handler in STANDARD_HANDLERS:
        assoc.unbind(event, handler)
