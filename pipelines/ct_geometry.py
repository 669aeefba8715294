"""Moving a CT volume onto a model's grid (as the MONAI bundles do) and label maps back to the source.

Forward: MONAI's own ``Orientation(axcodes="RAS")`` then ``Spacing(pixdim, mode="bilinear")`` on the
``MetaTensor`` from ``CtVolume.to_metatensor`` — the bundles' transforms, so the network sees what it
saw in validation. Backward: every source voxel centre is mapped through the two affines and takes
the label of the nearest model voxel (the bundles' ``Invertd(nearest_interp=True)``), computed
directly from the affines so that it holds for any orientation, order or spacing of the source.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from monai.transforms.spatial.array import Orientation, Spacing

from pipelines.io import LPS_TO_RAS, CtVolume


def to_model_grid(volume: CtVolume, spacing_mm: Sequence[float]) -> Any:
    """The volume in RAS orientation resampled (bilinear) to ``spacing_mm``: a (1, X, Y, Z) MetaTensor."""
    image = volume.to_metatensor()
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
    slices, rows, cols = volume.shape
    to_model = np.linalg.inv(labels_affine_lps) @ volume.affine_lps
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
