"""Running the external validators and renderers on written objects."""

from __future__ import annotations

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
