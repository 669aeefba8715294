"""One canonical array layout in patient space, reached and left by exact index mapping only.

The same anatomy can arrive in many array layouts: slices head-first or feet-first, in any file order,
columns or rows mirrored (with the orientation vector negated), rows and columns swapped. Everything
that resamples, infers, breaks ties or sums (``pipelines.ct_geometry``, the pipelines' postprocessing)
runs on ``PatientSpace``, the volume brought to one layout by axis permutations and flips alone (no
interpolation), so that every such variant gives the same array, the same affine and hence the same
result voxel for voxel; the label map goes back to the source's (slices, rows, columns) by the inverse
permutation and flips. Ties (nearest-neighbour rounding at exactly half a voxel, equally large
components) are thereby broken in patient space, never in the order a scanner happened to store.

The canonical layout (the patient's "LPS" orientation, as highdicom's
``Volume.to_patient_orientation("LPS")``): ``voxels[k, j, i]`` with ``i`` increasing towards the
patient's left (+x), ``j`` towards posterior (+y), ``k`` towards the head (+z); ``affine_lps`` maps
(i, j, k, 1) to patient mm, like ``CtVolume.affine_lps`` maps (column, row, slice, 1). A head-first
axial series with ImageOrientationPatient ``1\\0\\0\\0\\1\\0`` is already canonical. Each array axis of
the source goes to the patient axis its direction is closest to (for an oblique series the axes stay
oblique; only their order and signs change).

Two headers that describe the same voxel positions rarely give bit-identical affines (a mirrored
series' positions are computed and written as decimal strings; slice steps are averaged in another
order), and a difference in the 13th digit decides rounding ties. So the canonical affine is rounded to
``AFFINE_DECIMALS`` decimals of a mm (10 pm): far below any geometric meaning (under 10⁻⁵ mm across
a 512-voxel axis), far above the arithmetic noise (about 10⁻¹³ mm), and fine enough that the decimal
strings scanners write (0.9765625, 0.68359375, -249.51171875) keep every digit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import permutations
from typing import Any

import numpy as np
import numpy.typing as npt

from pipelines.io import LPS_TO_RAS, CtVolume, FloatArray

#: Decimals (of mm) the canonical affine is rounded to, so that equal geometry gives equal bits.
AFFINE_DECIMALS = 8


def _patient_axes(directions: npt.NDArray[np.float64]) -> tuple[int, int, int]:
    """For patient axis p (x, y, z), the source index axis (column, row, slice) closest to it.

    ``directions`` holds the index axes' unit vectors as columns. The assignment maximises the product
    of absolute cosines over the six permutations, so that it is a permutation even for oblique axes.
    """
    cosines = np.abs(directions)

    def score(perm: tuple[int, ...]) -> float:
        return float(np.prod([cosines[p, perm[p]] for p in range(3)]))

    best = max(permutations(range(3)), key=score)
    return (best[0], best[1], best[2])


def _flips(flipped: tuple[bool, bool, bool]) -> tuple[slice, ...]:
    return tuple(slice(None, None, -1) if f else slice(None) for f in flipped)


def _reorder(
    array: npt.NDArray[Any], source_axes: tuple[int, int, int], flipped: tuple[bool, bool, bool]
) -> npt.NDArray[Any]:
    return np.transpose(array, source_axes)[_flips(flipped)]


@dataclass(frozen=True)
class PatientSpace:
    """A ``CtVolume``'s voxels in the canonical patient layout, and the exact way back to the source.

    ``source_axes[a]`` is the source array axis (of slices, rows, columns) that canonical array axis
    ``a`` (of k, j, i) is taken from; ``flipped[a]`` whether it runs the other way.
    """

    voxels: FloatArray
    affine_lps: npt.NDArray[np.float64]
    source_axes: tuple[int, int, int]
    flipped: tuple[bool, bool, bool]

    @classmethod
    def of(cls, volume: CtVolume) -> PatientSpace:
        """The canonical view of ``volume`` (a view: no voxel is copied here)."""
        affine = volume.affine_lps
        columns = affine[:3, :3]
        directions = columns / np.linalg.norm(columns, axis=0)
        index_axis = _patient_axes(directions)  # patient axis p ← index axis (column, row, slice)
        sizes = (volume.shape[2], volume.shape[1], volume.shape[0])  # along column, row, slice
        canonical = np.eye(4)
        canonical[:3, 3] = affine[:3, 3]
        flip_p = []
        for p, n in enumerate(index_axis):
            flip = bool(directions[p, n] < 0)
            canonical[:3, p] = -columns[:, n] if flip else columns[:, n]
            if flip:
                canonical[:3, 3] += (sizes[n] - 1) * columns[:, n]
            flip_p.append(flip)
        # + 0.0 turns a rounded -0.0 into 0.0: signs of zero must not tell variants apart either.
        canonical = np.round(canonical, AFFINE_DECIMALS) + 0.0
        # Canonical array axis a holds patient axis 2 - a; index axis n is source array axis 2 - n.
        source_axes = tuple(2 - index_axis[2 - a] for a in range(3))
        flipped = tuple(flip_p[2 - a] for a in range(3))
        layout = ((source_axes[0], source_axes[1], source_axes[2]), (flipped[0], flipped[1], flipped[2]))
        return cls(_reorder(volume.voxels, *layout), canonical, *layout)

    def voxels_from_source(self, array: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """An array in the source's (slices, rows, columns) layout, in the canonical layout (a view)."""
        return _reorder(array, self.source_axes, self.flipped)

    def to_source(self, array: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """A canonical (k, j, i) array back in the source's (slices, rows, columns) layout (a copy)."""
        return np.ascontiguousarray(np.transpose(array[_flips(self.flipped)], np.argsort(self.source_axes)))

    @property
    def shape(self) -> tuple[int, int, int]:
        """(k, j, i): sizes along patient z, y, x."""
        k, j, i = self.voxels.shape
        return (k, j, i)

    @property
    def voxel_volume_mm3(self) -> float:
        return float(abs(np.linalg.det(self.affine_lps[:3, :3])))

    def to_metatensor(self) -> Any:
        """As ``CtVolume.to_metatensor``: a (1, i, j, k) ``MetaTensor`` with a RAS affine."""
        import torch
        from monai.data.meta_tensor import MetaTensor

        array = torch.from_numpy(np.ascontiguousarray(self.voxels.transpose(2, 1, 0)))[None]
        affine = torch.as_tensor(LPS_TO_RAS @ self.affine_lps, dtype=torch.float64)
        return MetaTensor(array, affine=affine, meta={"space": "RAS"})


def nearest_source_plane(volume: CtVolume, point_lps: Sequence[float]) -> int:
    """The index of the source plane (slice) nearest to a patient point, ties broken in patient space.

    The point's slice coordinate is taken on the canonical grid (the same bits for every layout of
    the same anatomy) and rounded there, half-way points towards the higher canonical index (towards
    the patient's head for an axial series), then mapped to the source's own plane order; a point
    beyond the first or last plane gets that plane.
    """
    space = PatientSpace.of(volume)
    axis = space.source_axes.index(0)  # the canonical array axis that holds the source's slices
    index = np.linalg.solve(space.affine_lps, np.array([*point_lps, 1.0]))[2 - axis]
    size = space.shape[axis]
    k = int(min(max(math.floor(float(index) + 0.5), 0), size - 1))
    return size - 1 - k if space.flipped[axis] else k
