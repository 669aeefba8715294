"""The embedded broker: kombu's ``filesystem://`` transport with an atomic publish and a defensive read.

kombu's stock channel opens the final ``<stamp>_<uuid>.<queue>.msg`` name, then locks and writes it; its
``_get`` lists the folder, moves a file and reads it without the lock, so a consumer can take a file
between create and write, read it empty (``JSONDecodeError``), and the message is lost until the
reconciler's ``queued_lease`` runs out. Here ``_put`` writes ``<final name>.part`` (which no ``_get``,
ours or kombu's, picks up: its suffix is not ``.<queue>.msg``), fsyncs it and ``os.replace``s it to the
final name, so a consumer sees a whole message or none. ``_get`` claims a file by renaming it into the
``claimed`` folder (same file system, so atomic: two consumers never both get it), and a file that cannot
be read or decoded is logged and moved aside into the ``corrupt`` folder instead of crashing the worker.

The folder layout is kombu's (``messages``, ``control``), so messages queued before an upgrade are
still delivered. Only ``celery_app`` imports this module (``broker_transport`` for ``filesystem://``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from pathlib import Path
from queue import Empty
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.json import dumps, loads

LOG = logging.getLogger(__name__)

PART_SUFFIX = ".part"
STALE_PART_SECONDS = 3600.0
"""A ``.part`` file this old belongs to a publisher that died before its ``os.replace``: its caller got
no acknowledgement (the reconciler re-enqueues the row), so the file is removed when a channel opens."""


class Channel(filesystem.Channel):
    """A filesystem channel whose messages appear whole (write, fsync, rename) and are read safely."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        for folder in (self.claimed_folder, self.corrupt_folder):
            folder.mkdir(parents=True, exist_ok=True)
        self._remove_stale_parts()

    @property
    def claimed_folder(self) -> Path:
        default = Path(self.data_folder_in).parent / "claimed"
        return Path(self.transport_options.get("claimed_folder", default))

    @property
    def corrupt_folder(self) -> Path:
        default = Path(self.data_folder_in).parent / "corrupt"
        return Path(self.transport_options.get("corrupt_folder", default))

    # kombu's two base classes name the argument differently (message, payload): keep the parent's
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Publish ``payload`` on ``queue``: written under a ``.part`` name, fsynced, renamed."""
        name = f"{round(time.monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        part = final + PART_SUFFIX
        data = dumps(payload).encode("utf-8")  # type: ignore[no-untyped-call]
        try:
            descriptor = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(descriptor, view) :]
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            os.replace(part, final)
        except OSError as error:
            _remove_quietly(part)
            raise ChannelError(f"cannot add message {final!r} to the queue folder: {error}") from error

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        """The oldest whole message of ``queue``; unreadable files go to ``corrupt/`` with a warning."""
        wanted = f"{queue}.msg"
        for name in sorted(os.listdir(self.data_folder_in)):
            if name.partition(".")[2] != wanted:
                continue
            claimed = self.claimed_folder / name
            try:
                os.rename(os.path.join(self.data_folder_in, name), claimed)
            except FileNotFoundError:
                continue  # another consumer of this queue took it first
            except OSError as error:
                raise ChannelError(f"cannot claim message {name!r}: {error}") from error
            try:
                payload = loads(claimed.read_bytes().decode("utf-8"))  # type: ignore[no-untyped-call]
            except (OSError, ValueError) as error:
                self._set_aside(claimed, queue, error)
                continue
            _remove_quietly(str(claimed))
            return payload
        raise Empty()

    def _set_aside(self, claimed: Path, queue: str, error: Exception) -> None:
        target = self.corrupt_folder / claimed.name
        try:
            os.replace(claimed, target)
        except OSError as move_error:
            LOG.error("cannot move unreadable message %s aside: %s", claimed, move_error)
            target = claimed
        LOG.warning(
            "unreadable message on queue %s moved to %s: %s (the reconciler enqueues its row again)",
            queue,
            target,
            error,
            extra={"queue": queue, "file": str(target)},
        )

    def _remove_stale_parts(self) -> None:
        folder = self.data_folder_out
        cutoff = time.time() - STALE_PART_SECONDS
        try:
            names = [name for name in os.listdir(folder) if name.endswith(PART_SUFFIX)]
        except OSError:
            return
        for name in names:
            path = os.path.join(folder, name)
            try:
                if os.stat(path).st_mtime < cutoff:
                    os.remove(path)
                    LOG.warning("removed %s, left by a publisher that died mid-write", path)
            except OSError:
                continue


class Transport(filesystem.Transport):
    """kombu's filesystem transport with :class:`Channel`."""

    Channel = Channel


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)
