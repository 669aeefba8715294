"""Time of the content checks (lungs and spine) per study, beside two anchors measured in the same run.

    .venv/bin/python bench/content_checks.py [--runs 5] [--slices 300]

Studies: the shared CT (``tests/data/ct/totalseg_dicom``: 20 slices of 512², JPEG 2000 lossless) and a
generated chest CT (``--slices`` slices of 512², 0.7 mm pixels, 1 mm apart, uncompressed; the phantom
of ``tests/phantoms.py``). Anchors: reading every header of the series with pydicom
(``stop_before_pixels``), which the checks do too to order the slices, and loading the full volume
(every slice decoded), which a pipeline's reader does at least. The table gives the median and the
maximum over ``--runs`` runs, after one warm-up run (imports, decoder set-up).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.content_checks import CHECKS, run_checks
from tests import phantoms
from tests.factories import write_ct_series

SHARED_CT = Path(__file__).resolve().parents[1] / "tests" / "data" / "ct" / "totalseg_dicom"


def _headers(paths: list[Path]) -> None:
    for path in paths:
        pydicom.dcmread(path, stop_before_pixels=True)


def _volume(paths: list[Path]) -> None:
    for path in paths:
        _ = pydicom.dcmread(path).pixel_array


def _timed(work: Callable[[], object], runs: int) -> tuple[float, float]:
    work()  # warm-up
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), max(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--slices", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        chest = write_ct_series(
            Path(tmp) / "chest", args.slices, thickness=1.0, spacing=0.7, phantom=phantoms.chest
        )
        studies = {
            "shared CT (20 × 512², JPEG 2000)": sorted(SHARED_CT.glob("*.dcm")),
            f"generated chest ({args.slices} × 512², uncompressed)": chest,
        }
        print(f"content checks {', '.join(CHECKS)}; {os.cpu_count()} CPUs; median / max of {args.runs} runs")
        print(f"{'study':44} {'checks':>16} {'headers only':>16} {'full volume':>16} {'sampled':>8}")
        for name, paths in studies.items():
            checks = _timed(lambda p=paths: run_checks(p, CHECKS), args.runs)
            headers = _timed(lambda p=paths: _headers(p), args.runs)
            volume = _timed(lambda p=paths: _volume(p), args.runs)
            report = run_checks(paths, CHECKS)
            cells = [f"{m * 1000:6.0f} / {x * 1000:5.0f} ms" for m, x in (checks, headers, volume)]
            sampled = f"{report.sampled_slices}/{report.slices}"
            print(f"{name:44} {cells[0]:>16} {cells[1]:>16} {cells[2]:>16} {sampled:>8}")
            for check in report.checks:
                print(f"    {check.reason}")


if __name__ == "__main__":
    main()
