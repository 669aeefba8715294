"""TCP_NODELAY on the edge's associations: those it receives and the C-MOVE sub-associations it opens."""

from __future__ import annotations

import logging
import socket

from pynetdicom import evt

LOG = logging.getLogger(__name__)


def nodelay(event: evt.Event) -> None:
    """EVT_CONN_OPEN: Nagle's algorithm would hold each small DIMSE message, such as a C-STORE-RSP, for
    up to 40 ms."""
    sock = event.assoc.dul.socket
    if sock is not None and sock.socket is not None:
        try:
            sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            LOG.debug("could not set TCP_NODELAY", exc_info=True)
