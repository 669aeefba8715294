"""Fixtures of the report tests: real results on the shared CT and radiograph, written once per session."""

from __future__ import annotations

import shutil
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

from .data import CT_DIR, CXR, ct_series, cxr, nifti_segmentation

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
def _shared_data_present() -> None:
    if not CT_DIR.is_dir() or not CXR.is_file():
        pytest.fail(f"The shared data is missing ({CT_DIR}, {CXR}); set DICOM_NODE_SHARED.")


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
def chromium() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.skip("OHIF check needs Chromium (/usr/bin/chromium); run ../shared/tools/ohif/setup.sh")
    return path
