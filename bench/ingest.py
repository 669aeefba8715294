"""Ingest throughput: the node vs DCMTK storescp receiving the same CT in the same run.

    .venv/bin/python bench/ingest.py [--slices 300] [--size 512] [--runs 3] [--receivers 1]

Sends a generated CT series with DCMTK storescu (TCP_NODELAY=1) over one association and over four
parallel associations, to DCMTK storescp (writes files, no fsync, no index) and to ``dicom-node serve``
(fsync + rename + indexed commit per instance, SQLite). Prints the median of ``--runs`` as a table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.factories import write_ct_series  # noqa: E402

ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@contextmanager
def storescp(workdir: Path) -> Iterator[int]:
    port = free_port()
    out = workdir / "storescp"
    out.mkdir()
    proc = subprocess.Popen(
        ["storescp", "-od", str(out), "+xa", str(port)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def node(workdir: Path, receivers: int) -> Iterator[int]:
    port = free_port()
    env = {
        **ENV,
        "DICOM_NODE_DATA_DIR": str(workdir / "node"),
        "DICOM_NODE_QUIET_PERIOD": "3600",
        "DICOM_NODE_LOG_LEVEL": "WARNING",
    }
    command = [
        str(REPO / ".venv/bin/dicom-node"),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--ae-title",
        "STORESCP",
        "--no-worker",
    ]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield port
    finally:
        proc.terminate()
        proc.wait(30)


def send(port: int, folders: list[Path]) -> float:
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["storescu", "-aec", "STORESCP", "+sd", "127.0.0.1", str(port), str(folder)],
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for folder in folders
    ]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(err.decode())
    return time.perf_counter() - start


def measure(receiver: Callable[[Path], object], folders: list[Path], runs: int) -> float:
    times = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp, receiver(Path(tmp)) as port:
            times.append(send(port, folders))  # type: ignore[arg-type]
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--receivers", type=int, default=1)
    args = parser.parse_args()
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: run scripts/setup --test")

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        one = data / "one"
        paths = write_ct_series(one, args.slices, rows=args.size, columns=args.size)
        total_mb = sum(p.stat().st_size for p in paths) / 1e6
        four = [data / f"part{i}" for i in range(4)]
        for i, path in enumerate(paths):
            four[i % 4].mkdir(exist_ok=True)
            os.link(path, four[i % 4] / path.name)

        rows = []
        for name, receiver in (
            ("DCMTK storescp (no fsync, no index)", storescp),
            ("dicom-node serve (fsync + index)", lambda w: node(w, args.receivers)),
        ):
            for label, folders in (("1", [one]), ("4", four)):
                seconds = measure(receiver, folders, args.runs)
                rows.append((name, label, args.slices, seconds, args.slices / seconds, total_mb / seconds))

    print(
        f"\n{args.slices} CT slices of {args.size}² ({total_mb:.0f} MB), storescu with TCP_NODELAY=1, "
        f"median of {args.runs}, {os.cpu_count()} cores\n"
    )
    header = f"| {'receiver':<38} | assocs | images | seconds | images/s |  MB/s |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for name, label, images, seconds, ips, mbs in rows:
        print(f"| {name:<38} | {label:>6} | {images:>6} | {seconds:>7.2f} | {ips:>8.0f} | {mbs:>5.0f} |")


if __name__ == "__main__":
    main()
