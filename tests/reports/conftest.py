"""Fixtures of the report tests: results on the real CT and radiograph (tests/data), and the OHIF harness."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import pytest

from pipelines.findings import (
    ClassificationFinding,
    ClassificationResult,
    ImageReference,
    ModelInfo,
    Nodule,
    NoduleDetectionResult,
    ScoreKind,
    SegmentationResult,
)
from tests.conftest import REPO

from .data import CT_DIR, CXR, ct_series, cxr, nifti_segmentation

# The OHIF viewer harness (run.sh, setup.sh) is not part of this repository: the OHIF test finds it in the
# folder named by this variable, by default ../shared/tools/ohif beside the checkout when that exists.
OHIF_ENV = "DICOM_NODE_OHIF"
OHIF_DEFAULT = REPO.parent / "shared" / "tools" / "ohif"

R = TypeVar("R", ClassificationResult, NoduleDetectionResult, SegmentationResult)

# The radiograph's Patient's Name is a bare UUID; highdicom warns about it whenever it copies it. The
# source is what it is (a real de-identified file), so that one warning is expected here.
PERSON_NAME_WARNING = "ignore:The string .* is unlikely to represent the intended person name:UserWarning"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.filterwarnings(PERSON_NAME_WARNING))


@pytest.fixture(scope="session", autouse=True)
def _real_data_present() -> None:
    if not CT_DIR.is_dir() or not CXR.is_file():
        pytest.fail(f"The real test data is missing ({CT_DIR}, {CXR}): see tests/data/README.md.")


def _ref(ds: object) -> ImageReference:
    return ImageReference(str(ds.SOPClassUID), str(ds.SOPInstanceUID))  # type: ignore[attr-defined]


def classification_result(score_kind: ScoreKind = ScoreKind.PROBABILITY) -> ClassificationResult:
    image = cxr()
    return ClassificationResult(
        model=ModelInfo(name="txrv-densenet121-res224-all", version="1.5.2-test"),
        source=_ref(image),
        findings=(
            ClassificationFinding("Atelectasis", 0.71, 0.5),
            ClassificationFinding("Effusion", 0.12, 0.4),
            ClassificationFinding("Lung Opacity", 0.64, 0.6),
            ClassificationFinding("Cardiomegaly", 0.05, 0.5),
        ),
        score_kind=score_kind,
    )


def nodule_result() -> NoduleDetectionResult:
    series = ct_series()
    by_z = sorted(series, key=lambda d: float(d.ImagePositionPatient[2]))
    centre_slice = by_z[8]
    z = float(centre_slice.ImagePositionPatient[2])
    # Right lower lobe region of this series; geometry consistent with the slice (x = -249.5 + 0.977 c).
    col, row = 150.0, 300.0
    x = float(centre_slice.ImagePositionPatient[0]) + col * float(centre_slice.PixelSpacing[1])
    y = float(centre_slice.ImagePositionPatient[1]) + row * float(centre_slice.PixelSpacing[0])
    nodule = Nodule(
        center=(x, y, z),
        box_min=(x - 6, y - 5, z - 6),
        box_max=(x + 6, y + 5, z + 6),
        long_axis_mm=12.0,
        volume_mm3=650.0,
        confidence=0.83,
        source_slice=_ref(centre_slice),
        center_pixel=(col, row),
    )
    return NoduleDetectionResult(
        model=ModelInfo(name="monai-lung-nodule-ct-detection", version="0.6.9-test"),
        series_instance_uid=str(centre_slice.SeriesInstanceUID),
        frame_of_reference_uid=str(centre_slice.FrameOfReferenceUID),
        source_images=tuple(_ref(ds) for ds in series),
        nodules=(nodule,),
    )


def vertebra_result() -> SegmentationResult:
    return nifti_segmentation(vertebrae_only=True)


def untrained(result: R) -> R:
    """The same result, as if its model's weights were an untrained scaffold."""
    model = replace(result.model, version="scaffold-0123abcd", untrained=True)
    return replace(result, model=model)


@pytest.fixture(scope="session")
def ohif_harness() -> Path:
    """The OHIF harness folder: ``$DICOM_NODE_OHIF``, else ../shared/tools/ohif if present; else skip."""
    named = os.environ.get(OHIF_ENV)
    if named:
        folder = (REPO / Path(named).expanduser()).resolve()  # a relative path is relative to the repo root
        if not (folder / "run.sh").is_file():
            pytest.fail(f"{OHIF_ENV}={named} is not the OHIF harness: {folder} has no run.sh")
        return folder
    if (OHIF_DEFAULT / "run.sh").is_file():
        return OHIF_DEFAULT
    pytest.skip(f"OHIF check needs the OHIF harness: set {OHIF_ENV} to its folder (the one with run.sh)")


@pytest.fixture(scope="session")
def chromium(ohif_harness: Path) -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.skip(f"OHIF check needs Chromium (/usr/bin/chromium); run {ohif_harness / 'setup.sh'}")
    return path


HARNESS_INFRASTRUCTURE_EXIT = 2
"""run.sh's exit status for a set-up or infrastructure failure (README of the harness), as opposed to 1,
an SR or SEG that did not display. Under a loaded CI machine its study list can come up empty
("study list: 0 row(s)") when OHIF's first QIDO-RS answer is late, while every object displays."""


def run_ohif_harness(
    harness: Path, out: Path, paths: list[Path], timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run the shared harness on ``paths``; once more (into a fresh ``out``) after an infrastructure exit."""
    command = ["bash", str(harness / "run.sh"), "--out", str(out), *map(str, paths)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if run.returncode == HARNESS_INFRASTRUCTURE_EXIT:
        summary = out / "summary.txt"
        first = summary.read_text() if summary.exists() else run.stdout[-2000:]
        print(f"\nOHIF harness: infrastructure exit {run.returncode}, running it once more; first:\n{first}")
        shutil.rmtree(out, ignore_errors=True)
        run = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    return run
