"""The embedded broker: kombu's ``filesystem://`` transport with an atomic publish and a defensive read.

kombu's stock channel opens the final ``<stamp>_<uuid>.<queue>.msg`` name, then locks and writes it; its
``_get`` lists the folder, moves a file and reads it without the lock, so a consumer can take a file
between create and write, read it empty (``JSONDecodeError``), and the message is lost until the
reconciler's ``queued_lease`` runs out. Here ``_put`` writes ``<final name>.part`` (which no ``_get``,
ours or kombu's, picks up: its suffix is not ``.<queue>.msg``), fsyncs it and ``os.replace``s it to the
final name, so a consumer sees a whole message or none. ``_get`` claims a file by renaming it into the
``claimed`` folder as ``<pid>-<name>`` (same file system, so atomic: two consumers never both get it) and
removes it when the message is acknowledged, rejected or restored; a channel that opens puts back the
files of processes that are gone (a worker killed with ``kill -9``). A file that cannot be read or
decoded is logged and moved aside into the ``corrupt`` folder instead of crashing the worker.

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
        self._held: dict[str, Path] = {}
        self._no_ack_queues: set[str] = set()
        for folder in (self.claimed_folder, self.corrupt_folder):
            folder.mkdir(parents=True, exist_ok=True)
        self._remove_stale_parts()
        self._put_back_orphans()

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
        # a fixed-width wall-clock stamp, so that ``sorted`` in ``_get`` is oldest first: kombu's
        # unpadded monotonic milliseconds sort 10679869 before 2000000 and start again at each boot
        name = f"{time.time_ns():020d}_{uuid.uuid4()}.{queue}.msg"
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
        """The oldest whole message of ``queue``; unreadable files go to ``corrupt/`` with a warning.

        The message is claimed as ``claimed/<pid>-<name>`` and stays there until it is acknowledged,
        rejected or restored, so one held by a worker that was killed is put back by the next channel.
        """
        wanted = f"{queue}.msg"
        for name in sorted(os.listdir(self.data_folder_in)):
            if name.partition(".")[2] != wanted:
                continue
            claimed = self.claimed_folder / f"{os.getpid()}-{name}"
            try:
                os.rename(os.path.join(self.data_folder_in, name), claimed)
            except FileNotFoundError:
                continue  # another consumer of this queue took it first
            except OSError as error:
                raise ChannelError(f"cannot claim message {name!r}: {error}") from error
            try:
                payload = loads(claimed.read_bytes().decode("utf-8"))  # type: ignore[no-untyped-call]
                tag = payload["properties"]["delivery_tag"]
            except (OSError, ValueError, TypeError, KeyError) as error:
                self._set_aside(claimed, name, queue, error)
                continue
            if queue in self._no_ack_queues:
                _remove_quietly(str(claimed))  # nobody will acknowledge it
            else:
                self._held[str(tag)] = claimed
            return payload
        raise Empty()

    def basic_consume(self, queue: Any, no_ack: Any, *args: Any, **kwargs: Any) -> Any:
        if no_ack:
            self._no_ack_queues.add(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)  # type: ignore[no-untyped-call]

    def basic_get(self, queue: Any, no_ack: bool = False, **kwargs: Any) -> Any:
        message = super().basic_get(queue, no_ack, **kwargs)  # type: ignore[no-untyped-call]
        if message is not None and no_ack:
            self._release(message.delivery_tag)
        return message

    def basic_ack(self, delivery_tag: Any, multiple: bool = False) -> None:
        super().basic_ack(delivery_tag, multiple)  # type: ignore[no-untyped-call]
        self._release(delivery_tag)

    def basic_reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        super().basic_reject(delivery_tag, requeue)  # type: ignore[no-untyped-call]
        self._release(delivery_tag)

    def _restore(self, message: Any) -> None:
        super()._restore(message)  # type: ignore[no-untyped-call]
        self._release(message.delivery_tag)

    def _release(self, delivery_tag: Any) -> None:
        held = self._held.pop(str(delivery_tag), None)
        if held is not None:
            _remove_quietly(str(held))

    def _put_back_orphans(self) -> None:
        """Messages claimed by a process that no longer runs (``kill -9``) go back into the queue."""
        try:
            names = os.listdir(self.claimed_folder)
        except OSError:
            return
        for claimed_name in names:
            pid_text, _, name = claimed_name.partition("-")
            if not pid_text.isdigit() or not name or _alive(int(pid_text)):
                continue
            try:
                os.replace(self.claimed_folder / claimed_name, os.path.join(self.data_folder_in, name))
            except OSError:
                continue  # another channel put it back first
            LOG.warning(
                "message %s was held by process %s, which is gone: queued again",
                name,
                pid_text,
                extra={"file": name, "pid": int(pid_text)},
            )

    def _set_aside(self, claimed: Path, name: str, queue: str, error: Exception) -> None:
        target = self.corrupt_folder / name
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)
