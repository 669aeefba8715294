"""OHIF against a node's DICOMweb: the site (``site.py``) plus the browser run (``driver.py``).

``view(site, studies, out)`` runs the driver with the harness venv's Python (selenium) and returns its
report. From the command line, for a node filled by hand (its ``[dicomweb] cors_origins`` must name
``http://127.0.0.1:PORT``, or be ``*``)::

    .venv/bin/python -m tests.ohif.harness --dicomweb http://127.0.0.1:8080/dicom-web --port 8090 STUDY_UID

Needs the OHIF dist and the selenium venv that ``../shared/tools/ohif/setup.sh`` unpacks under
``/tmp/ohif`` (``scripts/setup --test`` runs it), and Debian's chromium and chromedriver.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.ohif.site import OHIF_DIST, OhifSite

DRIVER = Path(__file__).with_name("driver.py")
SELENIUM_PYTHON = Path("/tmp/ohif/venv/bin/python")


def missing() -> str | None:
    """Why the OHIF check cannot run here, or None."""
    if not (OHIF_DIST / "index.html").is_file():
        return f"no OHIF dist at {OHIF_DIST} (run ../shared/tools/ohif/setup.sh)"
    if not SELENIUM_PYTHON.is_file():
        return f"no selenium venv at {SELENIUM_PYTHON} (run ../shared/tools/ohif/setup.sh)"
    for tool in ("chromium", "chromedriver"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/setup --test installs it)"
    return None


def view(
    site: OhifSite, dicomweb_url: str, studies: list[str], out: Path, timeout: float = 600
) -> dict[str, Any]:
    """Open each study in OHIF (served by ``site``) and check its SR and SEG; the driver's report."""
    run = subprocess.run(
        [
            str(SELENIUM_PYTHON),
            str(DRIVER),
            "--site",
            site.url,
            "--allow",
            dicomweb_url,
            "--out",
            str(out),
            *studies,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    report_path = out / "report.json"
    if not report_path.is_file():
        raise RuntimeError(f"the OHIF driver wrote no report (exit {run.returncode}): {run.stderr[-3000:]}")
    report: dict[str, Any] = json.loads(report_path.read_text())
    report["driver_stderr"] = run.stderr[-3000:]
    return report


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dicomweb", required=True, help="the node's DICOMweb root")
    parser.add_argument("--port", type=int, default=0, help="the site's port (0: any free one)")
    parser.add_argument("--out", type=Path, default=Path("var/ohif-dicomweb"))
    parser.add_argument("studies", nargs="+")
    args = parser.parse_args()
    if (why := missing()) is not None:
        print(why, file=sys.stderr)
        return 2
    site = OhifSite()
    if args.port:
        site.port = args.port
    else:
        site.bind()
    site.start(args.dicomweb)
    try:
        print(f"OHIF at {site.url} (the node must allow this origin)", file=sys.stderr)
        report = view(site, args.dicomweb, args.studies, args.out)
    finally:
        site.stop()
    print(json.dumps({k: v for k, v in report.items() if k != "driver_stderr"}, indent=1))
    return int(report["exit_status"])


if __name__ == "__main__":
    sys.exit(main())
