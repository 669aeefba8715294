"""Moving a CT volume onto a model's grid (as the MONAI bundles do) and label maps back to the source.

Both directions go through ``PatientSpace`` (``pipelines.patient_space``): the volume in one canonical
layout reached by exact axis permutations and flips, so that every slice order, orientation sign or
row/column flip of the same anatomy gives the same model grid, the same labels on it and the same
labels back, voxel for voxel. Forward: MONAI's own ``Orientation(axcodes="RAS")`` then
``Spacing(pixdim, mode="bilinear")`` on the canonical ``MetaTensor`` — the bundles' transforms (their
``Orientationd`` makes the same array from any layout), so the network sees what it saw in
validation. Backward: every canonical voxel centre is mapped through the two affines and takes the
label of the nearest model voxel (the bundles' ``Invertd(nearest_interp=True)``; a centre exactly half
way takes the higher model index, a rule fixed in patient space), computed directly from the affines
so that it holds for any orientation or spacing; then exact index mapping back to the source layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from monai.transforms.spatial.array import Orientation, Spacing

from pipelines.io import LPS_TO_RAS, CtVolume
from pipelines.patient_space import PatientSpace


def to_model_grid(volume: CtVolume | PatientSpace, spacing_mm: Sequence[float]) -> Any:
    """The volume in RAS orientation resampled (bilinear) to ``spacing_mm``: a (1, X, Y, Z) MetaTensor."""
    space = volume if isinstance(volume, PatientSpace) else PatientSpace.of(volume)
    image = space.to_metatensor()
    # Explicit labels: MONAI 1.6 warns that their default will change; these are the bundles' (RAS world).
    image = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(image)
    return Spacing(pixdim=tuple(float(s) for s in spacing_mm), mode="bilinear")(image)


def model_affine_lps(image: Any) -> npt.NDArray[np.float64]:
    """The LPS affine (voxel index → patient mm) of a MetaTensor whose affine is RAS."""
    affine = image.affine
    ras = affine.detach().cpu().numpy() if isinstance(affine, torch.Tensor) else np.asarray(affine)
    result: npt.NDArray[np.float64] = LPS_TO_RAS @ ras.astype(np.float64)
    return result


def labels_to_source_grid(
    labels: npt.NDArray[np.integer[Any]], labels_affine_lps: npt.NDArray[np.float64], volume: CtVolume
) -> npt.NDArray[np.uint16]:
    """Nearest-neighbour resampling of a (X, Y, Z) label volume onto the source (slices, rows, columns)."""
    space = PatientSpace.of(volume)
    result: npt.NDArray[np.uint16] = space.to_source(labels_to_patient_grid(labels, labels_affine_lps, space))
    return result


def labels_to_patient_grid(
    labels: npt.NDArray[np.integer[Any]], labels_affine_lps: npt.NDArray[np.float64], space: PatientSpace
) -> npt.NDArray[np.uint16]:
    """Nearest-neighbour resampling of a (X, Y, Z) label volume onto the canonical (k, j, i) grid."""
    slices, rows, cols = space.shape
    to_model = np.linalg.inv(labels_affine_lps) @ space.affine_lps
    out = np.zeros((slices, rows, cols), dtype=np.uint16)
    col_index, row_index = np.meshgrid(np.arange(cols, dtype=np.float64), np.arange(rows, dtype=np.float64))
    size = np.array(labels.shape)
    for k in range(slices):
        # model index = M · (c, r, k, 1): one slice at a time keeps memory at one plane of coordinates
        idx = [
            to_model[i, 0] * col_index + to_model[i, 1] * row_index + (to_model[i, 2] * k + to_model[i, 3])
            for i in range(3)
        ]
        nearest = [np.floor(a + 0.5).astype(np.int64) for a in idx]
        inside = np.ones((rows, cols), dtype=bool)
        for axis in range(3):
            inside &= (nearest[axis] >= 0) & (nearest[axis] < size[axis])
        plane = np.zeros((rows, cols), dtype=np.uint16)
        plane[inside] = labels[nearest[0][inside], nearest[1][inside], nearest[2][inside]]
        out[k] = plane
    return out
