"""A publisher or consumer of the node's embedded broker, run as its own process by tests and bench.

``python tests/jobs/fs_queue_peer.py consume DATA_DIR COUNT REPORT [--stock]`` drains the ``io`` queue
through the node's Celery app (``create_app``) until it holds COUNT messages, saw none for 5 s after
its first, or ran 50 s, and writes a JSON report: every delivery id received (in order) and every
error a read raised.
``publish DATA_DIR FIRST COUNT [--stock]`` sends ids FIRST..FIRST+COUNT-1 with ``TaskQueue``.
``hold DATA_DIR MARKER`` takes one message, never acknowledges it, writes MARKER and sleeps (to be killed).
``--stock`` uses kombu's own ``filesystem`` transport instead of ``dicom_node.jobs.fs_transport``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from kombu import Consumer, Exchange, Message, Queue

from dicom_node.config import JobSettings, Settings
from dicom_node.jobs.celery_app import IO_QUEUE, NodeCelery, TaskQueue, create_app

POLLING = 0.001
IDLE_END = 5.0
GIVE_UP = 50.0


def node_app(data_dir: Path, stock: bool) -> NodeCelery:
    settings = Settings(data_dir=data_dir, jobs=JobSettings(polling_interval=POLLING))
    app = create_app(settings)
    if stock:
        app.conf.broker_transport = "filesystem"
    return app


def consume(app: NodeCelery, count: int, report: Path) -> None:
    received: list[int] = []
    errors: list[str] = []

    def on_message(body: Any, message: Message) -> None:
        args = body[0]
        received.append(int(args[0]))
        message.ack()

    queue = Queue(IO_QUEUE, Exchange(IO_QUEUE), routing_key=IO_QUEUE)
    started = last = time.monotonic()
    with (
        app.connection_for_read() as connection,
        Consumer(connection, queues=[queue], callbacks=[on_message], accept=["json"]),
    ):
        report.with_suffix(".ready").write_text("ready")
        while len(received) < count:
            now = time.monotonic()
            if now - started > GIVE_UP or (received and now - last > IDLE_END):
                break
            before = len(received)
            try:
                connection.drain_events(timeout=0.5)
            except TimeoutError:
                pass
            except Exception as error:  # the stock transport's torn read lands here
                errors.append(f"{type(error).__name__}: {error}")
            if len(received) != before:
                started = last = time.monotonic()
    report.write_text(json.dumps({"received": received, "errors": errors}))


def hold(app: NodeCelery, marker: Path) -> None:
    with app.connection_for_read() as connection:
        message = None
        while message is None:
            message = connection.default_channel.basic_get(IO_QUEUE)
            time.sleep(0.01)
        marker.write_text(json.dumps(message.decode()[0]))
        time.sleep(3600)


def publish(app: NodeCelery, first: int, count: int) -> None:
    queue = TaskQueue(app)
    for delivery_id in range(first, first + count):
        queue.enqueue_delivery(delivery_id)


def main(argv: list[str]) -> None:
    stock = "--stock" in argv
    args = [a for a in argv if a != "--stock"]
    app = node_app(Path(args[1]), stock)
    if args[0] == "consume":
        consume(app, int(args[2]), Path(args[3]))
    elif args[0] == "hold":
        hold(app, Path(args[2]))
    elif args[0] == "publish":
        publish(app, int(args[2]), int(args[3]))
    else:
        raise SystemExit(f"unknown mode {args[0]!r}: consume or publish")


if __name__ == "__main__":
    main(sys.argv[1:])
