"""Largest connected component per label: ours against MONAI's transforms on several blobs per label."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from pipelines.ct_vertebrae import largest_components

MIN_VOXELS = 29.5


def blobs() -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """A label map with several blobs per label, and what each kept label must keep."""
    m = np.zeros((20, 24, 24), dtype=np.uint16)
    # Label 1: A (64 voxels) touches C (8) at one corner only, so A+C (72) is one component with 26-
    # connectivity and beats B (68); with 6-connectivity B would win.
    m[1:5, 1:5, 1:5] = 1  # A
    m[5:7, 5:7, 5:7] = 1  # C
    m[10:14, 12:16, 12:16] = 1  # B: a 4×4×4 cube …
    m[14, 12:16, 12] = 1  # … and a strip of 4 on one face
    # Label 2: its largest blob (27) is below MIN_VOXELS, so the label goes.
    m[1:4, 18:21, 18:21] = 2
    m[8:10, 18:20, 1:3] = 2
    # Label 7: the first blob in scan order is the smaller one.
    m[0:2, 10:12, 1:3] = 7  # 8
    m[15:19, 1:5, 18:22] = 7  # 64
    # Label 5 is not kept.
    m[16:18, 20:22, 1:3] = 5
    expected = {1: np.zeros_like(m, dtype=bool), 7: np.zeros_like(m, dtype=bool)}
    expected[1][1:5, 1:5, 1:5] = expected[1][5:7, 5:7, 5:7] = True
    expected[7][15:19, 1:5, 18:22] = True
    return m, expected


KEPT = [1, 2, 3, 7]  # 3 is absent


def monai_largest_components(label_map: np.ndarray, kept: list[int], min_voxels: float) -> np.ndarray:
    from monai.transforms import KeepLargestConnectedComponent, RemoveSmallObjects

    only_kept = np.where(np.isin(label_map, kept), label_map, 0).astype(np.int32)
    image = torch.from_numpy(only_kept)[None]
    largest = KeepLargestConnectedComponent(applied_labels=kept, independent=True, connectivity=3)(image)
    with warnings.catch_warnings():
        # MONAI 1.6 passes scikit-image 0.26 its deprecated min_size (same meaning: smaller is removed).
        warnings.filterwarnings(
            "ignore", message="Parameter `min_size` is deprecated", category=FutureWarning
        )
        cleaned = RemoveSmallObjects(min_size=math.ceil(min_voxels), connectivity=3)(largest)
    return np.asarray(cleaned)[0].astype(np.uint16)


def test_keeps_each_labels_largest_26_connected_component_above_the_minimum():
    m, expected = blobs()
    out = largest_components(m, KEPT, MIN_VOXELS)
    assert set(np.unique(out).tolist()) == {0, 1, 7}
    for value, mask in expected.items():
        np.testing.assert_array_equal(out == value, mask)


def test_a_component_of_exactly_the_minimum_is_kept():
    m, expected = blobs()
    out = largest_components(m, KEPT, 64.0)
    np.testing.assert_array_equal(out == 7, expected[7])
    assert not np.any(largest_components(m, KEPT, 64.5) == 7)


def test_equals_monai_keep_largest_then_remove_small_objects():
    pytest.importorskip("skimage.measure")  # MONAI's connected components are scikit-image's
    m, _ = blobs()
    # Thresholds on both sides of the component sizes (64, 72), none within one voxel of them: with
    # scikit-image 0.26 MONAI also drops a component of exactly min_size voxels, which the rule here
    # ("has min_voxels") and MONAI's documentation keep.
    for min_voxels in (0.0, MIN_VOXELS, 62.5, 65.5, 70.5, 73.5):
        np.testing.assert_array_equal(
            largest_components(m, KEPT, min_voxels), monai_largest_components(m, KEPT, min_voxels)
        )


def test_of_two_equal_largest_components_the_first_in_scan_order_is_kept():
    m = np.zeros((10, 10, 10), dtype=np.uint16)
    m[1:3, 1:3, 1:3] = m[6:8, 6:8, 6:8] = 4
    out = largest_components(m, [4], 0.0)
    assert int(out.sum()) == 8 * 4
    assert np.all(out[1:3, 1:3, 1:3] == 4)
