"""The lungs' bounding box on a model grid: the nodule pipeline's ``fast`` mode looks only there.

Found at a coarse resolution (every 4th voxel in-plane, every 2nd along the slice axis of the RAS grid):
the body is the largest connected component of HU > -500, its holes filled on each axial plane; the
lungs are the air (HU < -400) inside it. The box is that air's extent, widened by ``MARGIN_MM`` on every
side (a nodule touching the pleura keeps its context; the coarse sampling loses at most 4 voxels) and
clipped to the grid. No air inside the body (no lungs in the field of view, or a body outline that is
not closed) gives the whole grid, i.e. the exact mode's input.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy import ndimage

BODY_HU = -500.0
AIR_HU = -400.0
MARGIN_MM = 15.0
STEP = (4, 4, 2)

#: (start, stop) voxel indices along each of the grid's three axes.
Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


def lung_box(hu: npt.NDArray[np.floating], spacing_mm: Sequence[float]) -> Box:
    """The lungs' box (with margin) on an (X, Y, Z) HU grid whose third axis runs along the slices."""
    full: Box = ((0, hu.shape[0]), (0, hu.shape[1]), (0, hu.shape[2]))
    coarse = hu[:: STEP[0], :: STEP[1], :: STEP[2]]
    components, count = ndimage.label(coarse > BODY_HU)
    if count == 0:
        return full
    sizes = np.bincount(components.ravel())[1:]
    body = components == int(np.argmax(sizes)) + 1
    filled = np.empty_like(body)
    for z in range(body.shape[2]):
        filled[:, :, z] = ndimage.binary_fill_holes(body[:, :, z])
    air = filled & (coarse < AIR_HU)
    if not air.any():
        return full
    box = []
    for axis in range(3):
        present = np.flatnonzero(air.any(axis=tuple(a for a in range(3) if a != axis)))
        margin = int(np.ceil(MARGIN_MM / float(spacing_mm[axis])))
        lo = max(int(present[0]) * STEP[axis] - margin, 0)
        hi = min((int(present[-1]) + 1) * STEP[axis] + margin, hu.shape[axis])
        box.append((lo, hi))
    return (box[0], box[1], box[2])
