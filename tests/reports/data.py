"""Loading the real test data for the report tests, and turning the NIfTI labels into a result."""

from __future__ import annotations

from functools import cache

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pydicom

from pipelines.findings import ImageReference, ModelInfo, SegmentationResult, SegmentLabel
from tests.conftest import CT_DIR, CXR, DATA

CT_LABELS = DATA / "ct" / "totalseg_example_seg_dicom.nii.gz"

# TotalSegmentator v2 "total" labels present in the example that the data README names.
TOTALSEG_NAMES = {32: "vertebrae_T12", 33: "vertebrae_T11"}


@cache
def ct_series() -> tuple[pydicom.Dataset, ...]:
    """The 20 CT slices, in file order (not sorted: writers must not depend on order)."""
    return tuple(pydicom.dcmread(p) for p in sorted(CT_DIR.glob("*.dcm")))


@cache
def cxr() -> pydicom.Dataset:
    return pydicom.dcmread(CXR)


def nifti_to_lps_affine(affine: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """NIfTI's voxel → RAS affine turned into voxel → LPS (DICOM patient coordinates)."""
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def dicom_pixel_to_lps(ds: pydicom.Dataset) -> npt.NDArray[np.float64]:
    """(column, row, 0, 1) → LPS for one slice, from its Image Position/Orientation and Pixel Spacing."""
    iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
    row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
    m = np.eye(4)
    m[:3, 0] = iop[:3] * col_spacing  # one column step moves along the row direction
    m[:3, 1] = iop[3:] * row_spacing
    m[:3, 3] = np.asarray(ds.ImagePositionPatient, dtype=float)
    return m


def nifti_plane_for_slice(
    ds: pydicom.Dataset, nifti_data: npt.NDArray[np.integer], affine_lps: npt.NDArray[np.float64]
) -> npt.NDArray[np.integer]:
    """The NIfTI labels resampled (nearest, exactly: the grids must coincide) onto one DICOM slice.

    Every DICOM pixel centre is mapped to NIfTI voxel indices through both affines; the test insists the
    indices are integers within 1e-3, i.e. that the grids coincide and no interpolation is involved.
    """
    rows, cols = int(ds.Rows), int(ds.Columns)
    pixel_to_voxel = np.linalg.inv(affine_lps) @ dicom_pixel_to_lps(ds)
    c, r = np.meshgrid(np.arange(cols), np.arange(rows))
    homogeneous = np.stack([c.ravel(), r.ravel(), np.zeros(c.size), np.ones(c.size)])
    ijk = (pixel_to_voxel @ homogeneous)[:3]
    nearest = np.rint(ijk)
    if np.abs(ijk - nearest).max() > 1e-3:
        raise AssertionError("The NIfTI grid does not coincide with the DICOM slice grid.")
    idx = nearest.astype(int)
    for axis in range(3):
        if idx[axis].min() < 0 or idx[axis].max() >= nifti_data.shape[axis]:
            raise AssertionError("A DICOM pixel falls outside the NIfTI volume.")
    return nifti_data[idx[0], idx[1], idx[2]].reshape(rows, cols)


@cache
def nifti_label_map() -> npt.NDArray[np.uint16]:
    """The example labels on the CT grid, plane i on ``ct_series()[i]``."""
    image = nib.load(CT_LABELS)
    data = np.asarray(image.dataobj)
    affine_lps = nifti_to_lps_affine(image.affine)
    planes = [nifti_plane_for_slice(ds, data, affine_lps) for ds in ct_series()]
    return np.stack(planes).astype(np.uint16)


def hounsfield(ds: pydicom.Dataset) -> npt.NDArray[np.float64]:
    return ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


MODEL = ModelInfo(name="monai-wholebody-ct-segmentation", version="0.2.0-test", weights_sha256="ab" * 32)


def nifti_segmentation(*, vertebrae_only: bool = False) -> SegmentationResult:
    """The example labels as a pipeline result, with volume and mean HU measured on the CT."""
    series = ct_series()
    label_map = nifti_label_map().copy()
    if vertebrae_only:
        label_map[~np.isin(label_map, list(TOTALSEG_NAMES))] = 0
    hu = np.stack([hounsfield(ds) for ds in series])
    ds0 = series[0]
    voxel_mm3 = float(ds0.PixelSpacing[0]) * float(ds0.PixelSpacing[1]) * 2.0  # 2 mm slice step
    labels = []
    for value in (int(v) for v in np.unique(label_map) if v):
        mask = label_map == value
        labels.append(
            SegmentLabel(
                value=value,
                name=TOTALSEG_NAMES.get(value, f"totalseg_label_{value}"),
                volume_mm3=round(float(mask.sum()) * voxel_mm3, 3),
                mean_attenuation_hu=round(float(hu[mask].mean()), 3),
            )
        )
    return SegmentationResult(
        model=MODEL,
        series_instance_uid=str(ds0.SeriesInstanceUID),
        frame_of_reference_uid=str(ds0.FrameOfReferenceUID),
        source_images=tuple(ImageReference(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in series),
        label_map=label_map,
        labels=tuple(labels),
    )
