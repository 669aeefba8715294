"""A CT series as one oriented volume: ``CtVolume`` and its geometry conventions.

Geometry conventions (the same as DICOM's and the result types'):

* ``CtVolume.voxels`` has shape (slices, rows, columns) and holds Hounsfield units.
* ``CtVolume.affine_lps`` maps a voxel index written as (column, row, slice, 1) to patient coordinates
  in mm (LPS: +x left, +y posterior, +z head), so voxel centres sit at integer indices. Its first two
  columns are ImageOrientationPatient times PixelSpacing; its third is the step between slices.
* Slices are ordered by their position projected on the slice normal (row direction × column
  direction), never by file order or InstanceNumber: a series that arrives reversed or shuffled gives
  the same volume. ``source_images[i]`` is the image (or frame) that plane ``i`` came from.
* For MONAI the volume is handed over as a channel-first ``MetaTensor`` of shape (1, columns, rows,
  slices) with a RAS affine, which is what MONAI's ITK reader with ``affine_lps_to_ras=True`` gives and
  what the bundles' ``Orientationd(axcodes="RAS")`` expects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from pipelines.findings import ImageReference

#: LPS ↔ RAS: negate x and y.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class CtVolume:
    """A CT series as one regular volume in Hounsfield units with its exact patient geometry."""

    voxels: FloatArray
    affine_lps: npt.NDArray[np.float64]
    source_images: tuple[ImageReference, ...]
    series_instance_uid: str
    frame_of_reference_uid: str

    def __post_init__(self) -> None:
        if self.voxels.ndim != 3:
            raise ValueError('Argument "voxels" must have three dimensions (slices, rows, columns).')
        if self.voxels.shape[0] != len(self.source_images):
            raise ValueError('Argument "source_images" must name one image per plane of "voxels".')
        if self.affine_lps.shape != (4, 4):
            raise ValueError('Argument "affine_lps" must be a 4×4 matrix.')

    @property
    def shape(self) -> tuple[int, int, int]:
        """(slices, rows, columns)."""
        s, r, c = self.voxels.shape
        return (s, r, c)

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size along (column, row, slice) in mm."""
        norms = np.linalg.norm(self.affine_lps[:3, :3], axis=0)
        return (float(norms[0]), float(norms[1]), float(norms[2]))

    @property
    def voxel_volume_mm3(self) -> float:
        return float(abs(np.linalg.det(self.affine_lps[:3, :3])))

    def patient_point(self, column: float, row: float, plane: float) -> tuple[float, float, float]:
        """Patient (LPS) coordinates of a continuous voxel index."""
        p = self.affine_lps @ np.array([column, row, plane, 1.0])
        return (float(p[0]), float(p[1]), float(p[2]))

    def voxel_index(self, point_lps: Sequence[float]) -> tuple[float, float, float]:
        """Continuous (column, row, plane) index of a patient point."""
        v = np.linalg.solve(self.affine_lps, np.array([*point_lps, 1.0]))
        return (float(v[0]), float(v[1]), float(v[2]))

    def to_metatensor(self) -> Any:
        """The volume as MONAI sees it: a (1, columns, rows, slices) ``MetaTensor`` with a RAS affine."""
        import torch
        from monai.data.meta_tensor import MetaTensor

        array = torch.from_numpy(np.ascontiguousarray(self.voxels.transpose(2, 1, 0)))[None]
        affine = torch.as_tensor(LPS_TO_RAS @ self.affine_lps, dtype=torch.float64)
        return MetaTensor(array, affine=affine, meta={"space": "RAS"})
