"""What holds the GIL in ``dicom-node serve`` while it receives: a py-spy profile of one send.

    .venv/bin/python bench/ingest_profile.py --py-spy /tmp/pyspy/bin/py-spy [--slices 600]
                                             [--associations 1] [--single] [--top 40] [--baseline DIR]

py-spy is not one of the node's dependencies: ``python3 -m venv /tmp/pyspy && /tmp/pyspy/bin/pip install
py-spy``. The bench starts ``serve`` as ``bench/ingest.py`` does, sends a warm-up, then records
``py-spy record --gil`` (samples only while a thread holds the GIL) during a send of ``--slices`` CT
slices of 512² over ``--associations`` associations (``--single``: one association per slice, one
after another), and prints images/s, the node's CPU per image and the functions that held the GIL in
most samples (inclusive: a function counts in every sample it is on the stack of). ``--baseline`` profiles
the node of another checkout instead.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import ingest  # noqa: E402

from tests.factories import write_ct_series  # noqa: E402


def inclusive_shares(raw: Path) -> tuple[int, collections.Counter[str]]:
    """Samples in all, and per function (``name file``) the samples it was on the stack of."""
    total, counts = 0, collections.Counter[str]()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        seen = set()
        for frame in stack.split(";"):
            name, _, where = frame.partition(" (")
            key = f"{name} {where.rsplit('/', 1)[-1].split(':')[0]}" if where else name
            if key not in seen:
                seen.add(key)
                counts[key] += int(count)
    return total, counts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--py-spy", type=Path, required=True, help="the py-spy executable")
    parser.add_argument("--slices", type=int, default=600)
    parser.add_argument("--associations", type=int, default=1)
    parser.add_argument("--single", action="store_true", help="one association per slice")
    parser.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--baseline", type=Path, help="profile the node of this checkout")
    args = parser.parse_args()
    tree = (args.baseline or REPO).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths = write_ct_series(work / "ct", args.slices)
        parts = [work / f"part{i}" for i in range(args.associations)]
        for index, path in enumerate(paths):
            parts[index % len(parts)].mkdir(exist_ok=True)
            (parts[index % len(parts)] / path.name).hardlink_to(path)
        (work / "node").mkdir()
        raw = work / "profile.txt"
        with ingest.node(work / "node", tree) as (port, pid):
            ingest.send_each(port, paths[:3])  # warm-up: imports, caches, the first association
            record = ["record", "--pid", str(pid), "--gil", "-r", str(args.rate), "--nonblocking"]
            spy = subprocess.Popen(
                [str(args.py_spy), *record, "-f", "raw", "-o", str(raw)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.5)  # py-spy attaches
            cpu = ingest.cpu_seconds(pid)
            seconds = ingest.send_each(port, paths) if args.single else ingest.send(port, parts)
            cpu = ingest.cpu_seconds(pid) - cpu
            spy.send_signal(2)  # SIGINT: py-spy writes what it recorded
            spy.wait(60)
        total, counts = inclusive_shares(raw)
    how = "one association per slice" if args.single else f"{args.associations} association(s)"
    rate = len(paths) / seconds
    print(f"{tree.name}: {len(paths)} slices over {how}: {rate:.0f} images/s,")
    print(f"the node's CPU {1000 * cpu / len(paths):.2f} ms per image; {total} samples with the GIL held\n")
    for key, count in counts.most_common(args.top):
        print(f"{100 * count / max(total, 1):5.1f} %  {key}")


if __name__ == "__main__":
    main()
