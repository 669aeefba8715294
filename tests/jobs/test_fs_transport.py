"""The embedded broker loses no message to a torn read (``dicom_node.jobs.fs_transport``).

Real processes, no mocks: two publisher processes send delivery ids through the node's Celery app while a
consumer process drains the ``io`` queue with the node's transport, polling every millisecond. Every id
must arrive exactly once and decode. ``bench/fs_transport.py`` runs the same against kombu's stock
transport, which reads a file between its create and its write now and then.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kombu import Exchange, Queue

from dicom_node.config import JobSettings, Settings
from dicom_node.jobs.celery_app import IO_QUEUE, TaskQueue, create_app

REPO = Path(__file__).resolve().parents[2]
PEER = REPO / "tests" / "jobs" / "fs_queue_peer.py"
PUBLISHERS = 2
PER_PUBLISHER = 600


def _env() -> dict[str, str]:
    # the shared virtualenv's editable install points at another checkout: test this one
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _wait_for(path: Path, deadline: float) -> None:
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.02)


def test_concurrent_publish_and_drain_delivers_every_message_once(tmp_path: Path) -> None:
    total = PUBLISHERS * PER_PUBLISHER
    report = tmp_path / "report.json"
    consumer = subprocess.Popen(
        [sys.executable, str(PEER), "consume", str(tmp_path), str(total), str(report)], env=_env()
    )
    try:
        _wait_for(report.with_suffix(".ready"), time.monotonic() + 20)
        publishers = [
            subprocess.Popen(
                [
                    sys.executable,
                    str(PEER),
                    "publish",
                    str(tmp_path),
                    str(n * PER_PUBLISHER),
                    str(PER_PUBLISHER),
                ],
                env=_env(),
            )
            for n in range(PUBLISHERS)
        ]
        for publisher in publishers:
            assert publisher.wait(timeout=60) == 0
        assert consumer.wait(timeout=60) == 0
    finally:
        if consumer.poll() is None:
            consumer.kill()
    result = json.loads(report.read_text())
    assert result["errors"] == []
    assert sorted(result["received"]) == list(range(total))  # each once: no loss, no duplicate
    queue = tmp_path / "queue"
    assert os.listdir(queue / "messages") == []
    assert os.listdir(queue / "corrupt") == []
    assert os.listdir(queue / "claimed") == []


def test_unreadable_message_is_set_aside_and_the_next_one_delivered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(data_dir=tmp_path, jobs=JobSettings(polling_interval=0.01))
    app = create_app(settings)
    messages = tmp_path / "queue" / "messages"
    TaskQueue(app).enqueue_delivery(7)
    (written,) = os.listdir(messages)
    # what a stock kombu publisher leaves when it dies (or is read) between create and write
    torn = messages / f"{1:020d}_{'0' * 8}.{IO_QUEUE}.msg"
    torn.write_bytes(b"")
    garbage = messages / f"{2:020d}_{'1' * 8}.{IO_QUEUE}.msg"
    garbage.write_bytes(b'{"body": ')
    assert sorted(os.listdir(messages))[-1] == written  # the whole message sorts after both

    received: list[object] = []
    queue = Queue(IO_QUEUE, Exchange(IO_QUEUE), routing_key=IO_QUEUE)
    with (
        caplog.at_level(logging.WARNING, logger="dicom_node.jobs.fs_transport"),
        app.connection_for_read() as connection,
        connection.Consumer(queues=[queue], accept=["json"]) as consumer,
    ):
        consumer.register_callback(lambda body, message: (received.append(body[0]), message.ack()))
        connection.drain_events(timeout=5)

    assert received == [[7]]
    corrupt = tmp_path / "queue" / "corrupt"
    assert sorted(os.listdir(corrupt)) == sorted([torn.name, garbage.name])
    assert (corrupt / garbage.name).read_bytes() == b'{"body": '  # kept for a look, not deleted
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert str(corrupt / torn.name) in warned and str(corrupt / garbage.name) in warned
    assert os.listdir(messages) == []


def test_publish_leaves_no_partial_file_and_uses_the_stock_layout(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    app = create_app(settings)
    for delivery_id in range(5):
        TaskQueue(app).enqueue_delivery(delivery_id)
    names = os.listdir(tmp_path / "queue" / "messages")
    assert len(names) == 5
    assert all(name.partition(".")[2] == f"{IO_QUEUE}.msg" for name in names)  # kombu's own names
    for name in names:
        assert json.loads((tmp_path / "queue" / "messages" / name).read_text())["properties"]
    # the stamp has a fixed width, so the folder's sorted order (what a consumer takes) is publish order
    assert len({len(name) for name in names}) == 1
    published = [
        json.loads((tmp_path / "queue" / "messages" / name).read_text())["body"] for name in sorted(names)
    ]
    decoded = [json.loads(base64.b64decode(body))[0] for body in published]
    assert decoded == [[delivery_id] for delivery_id in range(5)]


def _drain_one(settings: Settings) -> list[object]:
    received: list[object] = []
    app = create_app(settings)
    queue = Queue(IO_QUEUE, Exchange(IO_QUEUE), routing_key=IO_QUEUE)
    with (
        app.connection_for_read() as connection,
        connection.Consumer(queues=[queue], accept=["json"]) as consumer,
    ):
        consumer.register_callback(lambda body, message: (received.append(body[0]), message.ack()))
        with contextlib.suppress(TimeoutError):
            connection.drain_events(timeout=1)
    return received


def test_messages_queued_by_kombus_stock_transport_survive_the_upgrade(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, jobs=JobSettings(polling_interval=0.01))
    before = create_app(settings)
    before.conf.broker_transport = "filesystem"  # what a node before this change publishes with
    TaskQueue(before).enqueue_delivery(41)
    assert _drain_one(settings) == [[41]]


def test_a_stale_partial_file_is_removed_and_a_fresh_one_never_delivered(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, jobs=JobSettings(polling_interval=0.01))
    messages = tmp_path / "queue" / "messages"
    messages.mkdir(parents=True)
    stale = messages / f"1_{'a' * 8}.{IO_QUEUE}.msg.part"
    fresh = messages / f"2_{'b' * 8}.{IO_QUEUE}.msg.part"
    for part in (stale, fresh):
        part.write_text('{"body": "half')
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    assert _drain_one(settings) == []
    assert sorted(os.listdir(messages)) == [fresh.name]  # a publisher may still be writing it


def test_a_message_held_by_a_consumer_killed_with_kill_9_is_queued_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(data_dir=tmp_path, jobs=JobSettings(polling_interval=0.01))
    TaskQueue(create_app(settings)).enqueue_delivery(99)
    marker = tmp_path / "held.json"
    holder = subprocess.Popen([sys.executable, str(PEER), "hold", str(tmp_path), str(marker)], env=_env())
    try:
        _wait_for(marker, time.monotonic() + 20)
        assert json.loads(marker.read_text()) == [99]
        claimed = tmp_path / "queue" / "claimed"
        assert [name.partition("-")[0] for name in os.listdir(claimed)] == [str(holder.pid)]
        assert os.listdir(tmp_path / "queue" / "messages") == []
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    finally:
        if holder.poll() is None:
            holder.kill()
    with caplog.at_level(logging.WARNING, logger="dicom_node.jobs.fs_transport"):
        assert _drain_one(settings) == [[99]]  # the next channel to open puts it back
    assert f"held by process {holder.pid}, which is gone" in caplog.text
    assert os.listdir(claimed) == []  # acknowledged: gone for good
