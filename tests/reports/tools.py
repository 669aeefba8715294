"""Running the external validators and renderers on written objects."""

from __future__ import annotations

import shutil
import subprocess
from io import BytesIO
from pathlib import Path

import pydicom

# dicom3tools of 2022 (Debian's) predates the Label Map Segmentation IOD (Sup 243, SOP Class
# 1.2.840.10008.5.1.4.1.1.66.7): it cannot find that IOD and reads its background segment 0 as a
# numbering error; an SR that references a segment of such a SEG draws the third line, because the
# validator does not know that SOP Class is a segmentation. These lines, and only for LABELMAP SEGs and
# the SRs that reference them, are a validator gap, not ours.
LABELMAP_VALIDATOR_GAPS = (
    "Error - Shall not be present for Referenced SOP Class that is not segmentation - attribute "
    "<ReferencedSegmentNumber>",
    "Error - Information Object Not found",
    "Error - SegmentNumber not monotonically increasing from one by one - have SegmentSequence item "
    "number 1 (from one) with SegmentNumber of 0",
)


def to_bytes(ds: pydicom.Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def reread(ds: pydicom.Dataset) -> pydicom.Dataset:
    return pydicom.dcmread(BytesIO(to_bytes(ds)))


def dciodvfy_errors(path: Path, *, labelmap: bool = False) -> tuple[list[str], str]:
    """The "Error" lines dciodvfy prints for a file (warnings are allowed), and its whole output."""
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    output = run.stdout + run.stderr
    errors = [line.strip() for line in output.splitlines() if line.strip().startswith("Error")]
    if labelmap:
        errors = [e for e in errors if e not in LABELMAP_VALIDATOR_GAPS]
    return errors, output


def run_dcmtk(
    tool: str, path: Path, *, references_labelmap: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run dsrdump/dsr2html. DCMTK 3.6.7 does not know the Label Map Segmentation SOP Class either and
    rejects an IMAGE item that references one as an invalid value; ``-Ev`` accepts it (with a warning)
    for SRs that reference a LABELMAP SEG, and only for those."""
    options = ["-Ev"] if references_labelmap else []
    return subprocess.run([tool, *options, str(path)], capture_output=True, text=True, timeout=120)


# PixelMed's validators (Debian libpixelmed-java): DicomSRValidator for SRs (IOD and TID 1500 template
# checks), DicomInstanceValidator for everything else. Its XSLT exceeds the JDK's default XPath limits.
PIXELMED_CLASSPATH = ":".join(
    f"/usr/share/java/{jar}.jar" for jar in ("pixelmed", "commons-codec", "commons-compress")
)
PIXELMED_BATCH = Path(__file__).parent / "pixelmed" / "PixelmedBatch.java"
PIXELMED_JAVA_OPTIONS = (
    "-Djdk.xml.xpathExprOpLimit=0",
    "-Djdk.xml.xpathExprGrpLimit=0",
    "-Djdk.xml.xpathTotalOpLimit=0",
)


def pixelmed_available() -> bool:
    return shutil.which("java") is not None and Path("/usr/share/java/pixelmed.jar").is_file()


def pixelmed_reports(paths: list[Path], *, timeout: float = 1500) -> dict[Path, str]:
    """PixelMed's report of each file, all in one JVM (PixelMed takes seconds to start and to load its
    compiled templates): ``tests/reports/pixelmed/PixelmedBatch.java`` runs the validators in turn."""
    run = subprocess.run(
        ["java", *PIXELMED_JAVA_OPTIONS, "-cp", PIXELMED_CLASSPATH, str(PIXELMED_BATCH), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if run.returncode != 0:
        raise RuntimeError(
            f"PixelMed batch failed ({run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
        )
    reports: dict[Path, str] = {}
    current: Path | None = None
    lines: list[str] = []
    for line in run.stdout.splitlines():
        if line.startswith("=== BEGIN "):
            current, lines = Path(line[len("=== BEGIN ") :]), []
        elif line.startswith("=== END ") and current is not None:
            reports[current] = "\n".join(lines)
            current = None
        else:
            lines.append(line)
    missing = [p for p in paths if p not in reports]
    if missing:
        raise RuntimeError(f"PixelMed reported nothing for {missing}:\n{run.stdout[-3000:]}")
    return reports


# PixelMed 2022 (Debian's) predates the Label Map Segmentation IOD as dicom3tools does (above), and its
# DicomInstanceValidator has no description of the Secondary Capture Image IOD (of our objects it
# describes only the Segmentation IOD): it says only this of a LABELMAP SEG or a companion image, which
# is no error of ours, and validates nothing else of them (dciodvfy does).
PIXELMED_LABELMAP_GAP = "IOD (SOP Class) unrecognized"


def pixelmed_findings(report: str) -> tuple[list[str], list[str]]:
    """(errors, warnings) of one PixelMed report: its "Error:" and "Warning:" lines."""
    lines = [line.strip() for line in report.splitlines()]
    return [x for x in lines if x.startswith("Error")], [x for x in lines if x.startswith("Warning")]
