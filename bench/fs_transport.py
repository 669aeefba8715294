"""Torn reads of the embedded broker: kombu's stock ``filesystem`` transport against the node's.

    .venv/bin/python bench/fs_transport.py --rounds 3 --publishers 2 --messages 600

Each round, for each transport in turn, a consumer process drains the ``io`` queue (polling every
millisecond) while publisher processes send delivery ids through the node's Celery app
(``tests/jobs/fs_queue_peer.py``). The table counts, per transport, read errors (a torn read is a
``JSONDecodeError`` on an empty file), ids lost, ids received twice, and the publish+drain seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PEER = REPO / "tests" / "jobs" / "fs_queue_peer.py"


def one_round(stock: bool, publishers: int, messages: int) -> tuple[int, int, int, float, Counter[str]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    flag = ["--stock"] if stock else []
    total = publishers * messages
    with tempfile.TemporaryDirectory(prefix="fsq-bench-") as folder:
        report = Path(folder) / "report.json"
        consumer = subprocess.Popen(
            [sys.executable, str(PEER), "consume", folder, str(total), str(report), *flag], env=env
        )
        while not report.with_suffix(".ready").exists():
            time.sleep(0.02)
        started = time.monotonic()
        senders = [
            subprocess.Popen(
                [sys.executable, str(PEER), "publish", folder, str(n * messages), str(messages), *flag],
                env=env,
            )
            for n in range(publishers)
        ]
        for sender in senders:
            sender.wait()
        consumer.wait()
        seconds = time.monotonic() - started
        result = json.loads(report.read_text())
    counts = Counter(result["received"])
    lost = sum(1 for i in range(total) if i not in counts)
    twice = sum(1 for c in counts.values() if c > 1)
    kinds = Counter(error.partition(":")[0] for error in result["errors"])
    return len(result["errors"]), lost, twice, seconds, kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--publishers", type=int, default=2)
    parser.add_argument("--messages", type=int, default=600, help="per publisher")
    args = parser.parse_args()
    rows: dict[str, list[tuple[int, int, int, float, Counter[str]]]] = {
        "kombu stock": [],
        "dicom_node fs_transport": [],
    }
    for _ in range(args.rounds):  # taking turns, so a loaded machine slows both alike
        rows["kombu stock"].append(one_round(True, args.publishers, args.messages))
        rows["dicom_node fs_transport"].append(one_round(False, args.publishers, args.messages))
    sent = args.publishers * args.messages
    print(f"{args.rounds} rounds × {sent} messages ({args.publishers} publisher processes, 1 consumer)")
    print("| transport               | rounds with a torn read | read errors | lost | twice | s/round |")
    print("|-------------------------|-------------------------|-------------|------|-------|---------|")
    for name, results in rows.items():
        torn_rounds = sum(1 for r in results if r[0] or r[1])
        print(
            f"| {name:<23} | {torn_rounds:>23} | {sum(r[0] for r in results):>11} "
            f"| {sum(r[1] for r in results):>4} | {sum(r[2] for r in results):>5} "
            f"| {sum(r[3] for r in results) / len(results):>7.2f} |"
        )
    for name, results in rows.items():
        kinds = sum((r[4] for r in results), Counter[str]())
        print(f"{name}: read errors by kind: {dict(kinds) or 'none'}")


if __name__ == "__main__":
    main()
