"""Real CT and radiograph fixtures, series variants written from the real CT, and oracle networks.

The oracles stand in for the networks so that geometry can be checked exactly: their output is a known
function of their input (a HU band as "segmentation", boxes around a planted marker as "detections").
They are test doubles, never analysis.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.uid import ExplicitVRLittleEndian
from scipy import ndimage

from pipelines.ct_lung_nodules import GridDetections
from tests.conftest import SHARED_DATA as DATA  # ../shared/data, or $DICOM_NODE_SHARED/data

CT_DIR = DATA / "ct" / "totalseg_dicom"
CXR = DATA / "cxr" / "txrv_siim_cxr_sc_jpeg.dcm"

# A marker planted in air anterior to the body: 8×8 pixels on three slices (sorted by position).
MARKER_ROWS = (72, 80)
MARKER_COLS = (136, 144)
MARKER_SLICES = (9, 12)
MARKER_HU = 3000.0
BONE_BAND_HU = (250.0, 4000.0)


def ct_paths() -> list[Path]:
    paths = sorted(CT_DIR.glob("*.dcm"))
    assert len(paths) == 20, f"expected the 20 real CT slices in {CT_DIR}"
    return paths


def read_sorted() -> list[pydicom.Dataset]:
    """The real slices sorted by z (all axial, so IPP z is the position along the normal)."""
    return sorted((pydicom.dcmread(p) for p in ct_paths()), key=lambda d: float(d.ImagePositionPatient[2]))


def stored_to_hu(ds: pydicom.Dataset, stored: np.ndarray) -> np.ndarray:
    return stored.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def write_uncompressed(ds: pydicom.Dataset, stored: np.ndarray, path: Path) -> None:
    ds.PixelData = np.ascontiguousarray(stored.astype(np.uint16)).tobytes()
    ds.Rows, ds.Columns = stored.shape
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)


def write_variant(out: Path, variant: str, *, marker: bool = False) -> list[Path]:
    """The real series rewritten as ``original``, ``reversed`` (instance numbers and file order reversed),
    ``flipped`` (columns mirrored, so the slice normal points the other way) or ``resampled`` (2×2
    in-plane averaging); every variant keeps each voxel's patient position."""
    out.mkdir(parents=True, exist_ok=True)
    slices = read_sorted()
    paths = []
    for k, ds in enumerate(slices):
        stored = ds.pixel_array.astype(np.float64)
        if marker and MARKER_SLICES[0] <= k < MARKER_SLICES[1]:
            value = (MARKER_HU - float(ds.RescaleIntercept)) / float(ds.RescaleSlope)
            stored[slice(*MARKER_ROWS), slice(*MARKER_COLS)] = value
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        row_dir, col_dir = iop[:3], iop[3:]
        dr, dc = (float(v) for v in ds.PixelSpacing)
        if variant == "flipped":
            stored = stored[:, ::-1]
            ipp = ipp + (stored.shape[1] - 1) * dc * row_dir
            ds.ImageOrientationPatient = [*(-row_dir).tolist(), *col_dir.tolist()]
        elif variant == "resampled":
            r, c = stored.shape
            stored = stored.reshape(r // 2, 2, c // 2, 2).mean(axis=(1, 3))
            ipp = ipp + 0.5 * dc * row_dir + 0.5 * dr * col_dir
            ds.PixelSpacing = [2 * dr, 2 * dc]
        elif variant == "reversed":
            ds.InstanceNumber = len(slices) - k
        elif variant != "original":
            raise ValueError(variant)
        ds.ImagePositionPatient = [float(v) for v in ipp]
        path = out / f"{k:03d}.dcm"
        write_uncompressed(ds, np.rint(stored), path)
        paths.append(path)
    return paths[::-1] if variant in ("reversed", "flipped") else paths


def expected_marker_centre() -> tuple[float, float, float]:
    """The marker centre in patient LPS, straight from the DICOM headers of the real series."""
    slices = read_sorted()
    middle = slices[(MARKER_SLICES[0] + MARKER_SLICES[1] - 1) // 2]
    ipp = np.array([float(v) for v in middle.ImagePositionPatient])
    iop = np.array([float(v) for v in middle.ImageOrientationPatient])
    dr, dc = (float(v) for v in middle.PixelSpacing)
    col = (MARKER_COLS[0] + MARKER_COLS[1] - 1) / 2
    row = (MARKER_ROWS[0] + MARKER_ROWS[1] - 1) / 2
    p = ipp + col * dc * iop[:3] + row * dr * iop[3:]
    return (float(p[0]), float(p[1]), float(p[2]))


def marker_sop_uid() -> str:
    return str(read_sorted()[(MARKER_SLICES[0] + MARKER_SLICES[1] - 1) // 2].SOPInstanceUID)


def oracle_marker_detector(image) -> GridDetections:
    """Oracle "detector": a box around each blob brighter than 1000 HU that peaks above 2500 HU.

    Half-way between the marker (3000) and air (≈ −1000) bilinear resampling crosses 1000 HU, so the
    box [first − ½, last + ½] is centred on the marker to within half a grid voxel.
    """
    hu = torch.as_tensor(image)[0].numpy()
    components, _ = ndimage.label(hu > 1000.0)
    boxes, scores = [], []
    for i, found in enumerate(ndimage.find_objects(components), start=1):
        if found is None or hu[found][components[found] == i].max() < 2500.0:
            continue
        lo = [s.start - 0.5 for s in found]
        hi = [s.stop - 1 + 0.5 for s in found]
        boxes.append([*lo, *hi])
        scores.append(0.9)
    return GridDetections(
        np.array(boxes, dtype=np.float64).reshape(-1, 6), np.array(scores, dtype=np.float64)
    )


def oracle_bone_band_segmenter(
    label: int, band: tuple[float, float] = BONE_BAND_HU
) -> Callable[[object], torch.Tensor]:
    """Oracle "segmenter": ``label`` wherever the grid's HU lies in ``band`` (default: bone), else 0."""

    def segment(image) -> torch.Tensor:
        hu = torch.as_tensor(image)[0]
        inside = (hu >= band[0]) & (hu < band[1])
        return torch.where(inside, label, 0).to(torch.int32)

    return segment


@pytest.fixture(scope="session")
def variants(tmp_path_factory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("ct-variants")
    return {v: write_variant(root / v, v) for v in ("original", "reversed", "flipped", "resampled")}


@pytest.fixture(scope="session")
def marker_variants(tmp_path_factory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("ct-marker-variants")
    return {
        v: write_variant(root / v, v, marker=True) for v in ("original", "reversed", "flipped", "resampled")
    }
