"""The nodule pipeline's ``fast`` mode box holds the lungs of the real CT and leaves the air around it."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from pipelines.ct_geometry import to_model_grid
from pipelines.io import load_ct_series
from pipelines.lung_region import MARGIN_MM, lung_box
from tests.conftest import CT_DIR

SPACING = (0.703125, 0.703125, 1.25)


def _full_resolution_lungs(hu: np.ndarray) -> np.ndarray:
    """Air inside the body outline at full resolution (largest HU > -500 component, holes filled)."""
    components, _ = ndimage.label(hu > -500.0)
    body = components == np.argmax(np.bincount(components.ravel())[1:]) + 1
    filled = np.stack([ndimage.binary_fill_holes(body[:, :, z]) for z in range(body.shape[2])], axis=2)
    return filled & (hu < -400.0)


def test_the_box_holds_every_lung_voxel_and_is_smaller_than_the_grid():
    image = to_model_grid(load_ct_series(sorted(CT_DIR.glob("*.dcm"))), SPACING)
    hu = np.asarray(image[0])
    box = lung_box(hu, SPACING)
    lungs = _full_resolution_lungs(hu)
    assert lungs.sum() > 10_000, "the real CT is a chest CT: its lungs must be found"
    inside = np.zeros_like(lungs)
    inside[slice(*box[0]), slice(*box[1]), slice(*box[2])] = True
    assert not (lungs & ~inside).any(), "lung voxels outside the fast mode's box"
    volume = np.prod([hi - lo for lo, hi in box])
    assert volume < 0.8 * hu.size, f"the box {box} hardly crops the grid {hu.shape}"
    margin = int(np.ceil(MARGIN_MM / SPACING[0]))
    xs = np.flatnonzero(lungs.any(axis=(1, 2)))
    assert box[0][0] <= max(xs[0] - margin, 0) + 4 and box[0][1] >= min(xs[-1] + 1 + margin, hu.shape[0]) - 4


def test_no_body_air_gives_the_whole_grid():
    hu = np.full((40, 40, 10), 40.0, dtype=np.float32)  # soft tissue filling the grid: no lungs
    assert lung_box(hu, SPACING) == ((0, 40), (0, 40), (0, 10))
