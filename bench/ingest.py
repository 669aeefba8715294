"""Ingest throughput: the node vs DCMTK storescp and Orthanc receiving the same CT in the same run.

    .venv/bin/python bench/ingest.py [--slices 300] [--size 512] [--runs 3] [--single 30] [--parallel 4]
                                     [--receivers 2] [--only NAME,...] [--baseline DIR]

Sends a generated CT series with DCMTK storescu (TCP_NODELAY=1) over one association, over four (or
``--parallel``) associations at once, and (``--single``) its first slices one association each, one
after another, as a modality that sends each image on its own does (that row's time includes starting
``storescu`` per image, the same for every receiver), to DCMTK storescp (writes files, no fsync, no
index), to Orthanc (Debian's package as shipped: SQLite index, ``SyncStorageArea`` fsync, its 16 KiB
PDU; TCP_NODELAY=1 in its environment, which its DCMTK network layer reads) and to ``dicom-node
serve`` (fsync of file and folder and an indexed commit per instance before the response, SQLite;
also with ``--receivers`` receiver processes on its port, whose CPU is counted with the node's). The
receivers take turns within each run (storescp, Orthanc, node; 1, 4, then one association per image),
so a machine shared with other work slows them alike; the table holds the median of ``--runs`` and
each receiver's ratio to storescp. The "fsync floor" rows write the same files the way the node makes
them durable (write, fsync, rename, fsync of the folder) and do nothing else: no receiver that fsyncs
each instance before its response can be faster on this disk.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
def storescp(workdir: Path) -> Iterator[tuple[int, int]]:
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
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def orthanc(workdir: Path) -> Iterator[tuple[int, int]]:
    port = free_port()
    storage = workdir / "orthanc"
    config = workdir / "orthanc.json"
    config.write_text(
        json.dumps(
            {
                "Name": "bench",
                "StorageDirectory": str(storage),
                "IndexDirectory": str(storage),
                "DicomAet": "STORESCP",
                "DicomPort": port,
                "HttpServerEnabled": False,
                "HttpPort": free_port(),
                "Plugins": [],
            }
        )
    )
    proc = subprocess.Popen(
        ["Orthanc", str(config)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_port(port)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(30)


@contextmanager
def node(workdir: Path, tree: Path = REPO, receivers: int = 1) -> Iterator[tuple[int, int]]:
    """``dicom-node serve`` of the checkout at ``tree`` (the shared virtualenv's editable install may
    point at another checkout: ``PYTHONPATH`` makes the one measured explicit), with ``receivers``
    processes on its port."""
    port = free_port()
    env = {
        **ENV,
        **({"DICOM_NODE_RECEIVERS": str(receivers)} if receivers > 1 else {}),
        "PYTHONPATH": str(tree),
        "DICOM_NODE_DATA_DIR": str(workdir / "node"),
        "DICOM_NODE_QUIET_PERIOD": "3600",
        "DICOM_NODE_LOG_LEVEL": "WARNING",
        "DICOM_NODE_SHUTDOWN_GRACE": "2",  # wait_port's bare connection stays an association
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
        wait_listeners(port, receivers)
        yield port, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            if os.environ.get("BENCH_HANG_DUMP"):
                subprocess.run([os.environ["BENCH_HANG_DUMP"], "dump", "--pid", str(proc.pid)], check=False)
            proc.kill()
            proc.wait()
            # The send was measured already; say so and go on.
            print(f"warning: dicom-node serve ({tree}) did not stop within 30 s of SIGTERM", file=sys.stderr)


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


def wait_listeners(port: int, count: int, timeout: float = 30.0) -> None:
    """Wait until ``count`` sockets listen on ``port`` (the node's receiver processes start after it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listening = 0
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            listening += int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A"
        if listening >= count:
            return
        time.sleep(0.05)
    raise RuntimeError(f"fewer than {count} sockets listen on {port}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process and its running children (threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:
            continue
        total += sum(cpu_seconds(int(child)) for child in children if Path(f"/proc/{child}").exists())
    return total


def send_each(port: int, files: list[Path]) -> float:
    """One association per file, one after another (a modality that sends each image on its own)."""
    start = time.perf_counter()
    for path in files:
        done = subprocess.run(
            ["storescu", "-aec", "STORESCP", "127.0.0.1", str(port), str(path)],
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(done.stderr.decode())
    return time.perf_counter() - start


def measure(receiver: Callable[[Path], Any], folders: list[Path]) -> tuple[float, float]:
    """Seconds the send took and the CPU seconds the receiver spent meanwhile (the latter is what a
    loaded machine disturbs least)."""
    with (
        tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp,
        receiver(Path(tmp)) as (
            port,
            pid,
        ),
    ):
        before = cpu_seconds(pid)
        seconds = send(port, folders) if folders[0].is_dir() else send_each(port, folders)
        return seconds, cpu_seconds(pid) - before


def durable_floor(load: list[Path]) -> tuple[float, float]:
    """The same files made durable the way the node does, with nothing else: written to a temporary
    name, fsynced, renamed into place and the folder fsynced; no network, no parsing, no index. The
    folders of a four-association load are written by four threads at once (the fsync releases the
    GIL). What no receiver that fsyncs before it answers can beat on this disk."""
    files = [sorted(f.iterdir()) for f in load] if load[0].is_dir() else [load]
    contents = [[path.read_bytes() for path in group] for group in files]  # not timed

    def write(group: list[bytes], folder: Path) -> None:
        folder.mkdir()
        folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i, data in enumerate(group):
                part = folder / f"{i}.part"
                fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
                try:
                    os.write(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(part, folder / f"{i}.dcm")
                os.fsync(folder_fd)
        finally:
            os.close(folder_fd)

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        folders = [Path(tmp) / str(n) for n in range(len(contents))]
        threads = [threading.Thread(target=write, args=pair) for pair in zip(contents, folders, strict=True)]
        before, start = os.times(), time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds, after = time.perf_counter() - start, os.times()
    return seconds, (after.user - before.user) + (after.system - before.system)


RECEIVERS: dict[str, tuple[str, Callable[[Path], Any]]] = {
    "storescp": ("DCMTK storescp (no fsync, no index)", storescp),
    "floor": ("fsync floor (write+fsync, no network)", lambda _: None),  # durable_floor, not a server
    "orthanc": ("Orthanc 1.10 (fsync + SQLite index)", orthanc),
    "node": ("dicom-node serve (fsync + index)", node),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--single", type=int, default=30, help="images sent one per association (a third row per receiver)"
    )
    parser.add_argument(
        "--parallel", default="4", help="association counts sent at once, comma-separated (besides 1)"
    )
    parser.add_argument(
        "--receivers",
        default="2",
        help="also the node with this many receiver processes (comma-separated; '' for none)",
    )
    parser.add_argument("--only", help="receivers, of " + ",".join(RECEIVERS) + " and nodeN")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout (e.g. the main branch) whose node runs in the same runs",
    )
    args = parser.parse_args()
    for count in (int(n) for n in args.receivers.split(",") if n.strip()):
        RECEIVERS[f"node{count}"] = (
            f"dicom-node serve, receivers = {count}",
            lambda w, count=count: node(w, receivers=count),
        )
    chosen = [name.strip() for name in (args.only or ",".join(RECEIVERS)).split(",") if name.strip()]
    unknown = [name for name in chosen if name not in RECEIVERS]
    if unknown:
        sys.exit(f"unknown receivers {unknown}: choose of {', '.join(RECEIVERS)}")
    if args.baseline is not None:
        tree = args.baseline.resolve()
        RECEIVERS["baseline"] = (f"dicom-node serve ({tree.name})"[:38], lambda w: node(w, tree))
        chosen.append("baseline")
    for tool in ("storescu", "storescp", "Orthanc"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: run scripts/setup --test")

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        one = data / "one"
        paths = write_ct_series(one, args.slices, rows=args.size, columns=args.size)
        total_mb = sum(p.stat().st_size for p in paths) / 1e6
        loads: list[tuple[str, list[Path], int]] = [("1", [one], len(paths))]
        for parallel in (int(n) for n in args.parallel.split(",") if n.strip()):
            parts = [data / f"{parallel}-part{i}" for i in range(parallel)]
            for i, path in enumerate(paths):
                parts[i % parallel].mkdir(exist_ok=True)
                os.link(path, parts[i % parallel] / path.name)
            loads.append((str(parallel), parts, len(paths)))
        single = paths[: args.single]
        if single:
            loads.append((f"{len(single)}×1", single, len(single)))
        images = {label: count for label, _, count in loads}
        times: dict[tuple[str, str], list[tuple[float, float]]] = {
            (n, label): [] for n in chosen for label, _, _ in loads
        }
        for _ in range(args.runs):  # interleaved: every receiver once per run
            for name in chosen:
                for label, folders, _ in loads:
                    if name == "floor":
                        if folders[0].is_dir():  # one association per image: no floor to compare
                            times[name, label].append(durable_floor(folders))
                    else:
                        times[name, label].append(measure(RECEIVERS[name][1], folders))

    print(
        f"\n{args.slices} CT slices of {args.size}² ({total_mb:.0f} MB), storescu with TCP_NODELAY=1, "
        f"median of {args.runs} interleaved runs, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}\n"
    )
    header = (
        f"| {'receiver':<38} | assocs | images | seconds | images/s |  MB/s | × storescp | CPU ms/image |"
    )
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    times = {key: values for key, values in times.items() if values}
    medians = {key: statistics.median(t for t, _ in values) for key, values in times.items()}
    cpu = {key: statistics.median(c for _, c in values) for key, values in times.items()}
    for (name, label), seconds in medians.items():
        anchor = medians.get(("storescp", label))
        ratio = f"{anchor / seconds:>10.2f}" if anchor else f"{'':>10}"
        print(
            f"| {RECEIVERS[name][0]:<38} | {label:>6} | {images[label]:>6} | {seconds:>7.2f} "
            f"| {images[label] / seconds:>8.0f} | {total_mb * images[label] / len(paths) / seconds:>5.0f} "
            f"| {ratio} | {1000 * cpu[name, label] / images[label]:>12.2f} |"
        )


if __name__ == "__main__":
    main()
