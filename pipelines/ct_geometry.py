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


def labels_to_patient_grid_by_inverse(
    labels: torch.Tensor, image: Any, space: PatientSpace
) -> npt.NDArray[np.uint16]:
    """A model-grid (X, Y, Z) label map back on the canonical (k, j, i) grid by MONAI's own inverse.

    What the whole-body bundle's ``Invertd(nearest_interp=True)`` does: ``Spacing`` then
    ``Orientation`` inverted from the operations ``to_model_grid`` recorded on ``image``, with every
    interpolation turned to nearest (``convert_applied_interp_mode``). ``image`` must be the very
    MetaTensor ``to_model_grid`` returned for ``space``. Bit for bit the bundle's resampling, where
    ``labels_to_patient_grid`` (its own rounding) differs from it in about 0.8 % of voxels of a label
    map that changes at every voxel (half-voxel ties and float32 grid coordinates inside MONAI).
    """
    from copy import deepcopy

    from monai.data.meta_tensor import MetaTensor
    from monai.transforms.compose import Compose
    from monai.transforms.utils import convert_applied_interp_mode

    pred = MetaTensor(
        torch.as_tensor(labels)[None].float(), meta=deepcopy(image.meta)
    )  # meta holds the affine
    pred.applied_operations = _anonymous(
        convert_applied_interp_mode(trans_info=image.applied_operations, mode="nearest", align_corners=None)
    )
    forward = Compose(
        [Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))), Spacing(pixdim=1.0)]
    )
    invert: Any = forward.inverse  # untyped in MONAI
    back = invert(pred)
    array = np.asarray(back[0].detach().cpu().numpy())
    out: npt.NDArray[np.uint16] = np.ascontiguousarray(np.rint(array).astype(np.uint16).transpose(2, 1, 0))
    if out.shape != space.shape:
        raise ValueError(
            'Argument "image" must be the model grid of "space" (shapes differ after the inverse).'
        )
    return out


def _anonymous(operations: Any) -> Any:
    """A copy of MONAI's recorded operations with each transform id set to ``TraceKeys.NONE``.

    MONAI checks that the inverting transform is the very object that ran forward; the ``NONE`` id
    is its own way to skip that check when an equal transform, built anew, inverts.
    """
    from monai.utils.enums import TraceKeys

    if isinstance(operations, dict):
        return {k: (TraceKeys.NONE if k == TraceKeys.ID else _anonymous(v)) for k, v in operations.items()}
    if isinstance(operations, list):
        return [_anonymous(v) for v in operations]
    return operations
