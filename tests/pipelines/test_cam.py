"""Class activation maps: the map-back geometry, the region outline, and an oracle DenseNet's planted CAM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.txrv_densenet import XrvDenseNet121
from pipelines.cam import (
    MAX_POLYGON_POINTS,
    CropGeometry,
    FeatureClassifier,
    activation_region,
    features_logits_and_cams,
    point_in_polygon,
)
from pipelines.cxr_classification import center_crop, resize_like_skimage
from pipelines.findings import ClassificationResult, Polygon

from .cam_oracle import (
    BRIGHT_CELL,
    BRIGHT_LABEL,
    DARK_CELL,
    DARK_LABEL,
    LABELS,
    cell_centre_in_source,
    oracle_pipeline,
    write_planted_radiograph,
)


def polygon_area(polygon: Polygon) -> float:
    x, y = np.array(polygon).T
    return float(abs(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])) / 2)


@pytest.mark.parametrize(("rows", "columns"), [(600, 900), (900, 600), (1024, 1024)])
def test_a_point_of_the_network_input_maps_to_its_source_pixel(rows, columns):
    """A small bright square planted in the source: its centroid on the real 224 input maps back onto it."""
    geometry = CropGeometry(rows, columns, 224)
    image = np.zeros((rows, columns), dtype=np.float32)
    r0, c0 = int(0.3 * rows), int(0.6 * columns)  # inside the centre square of every shape above
    image[r0 - 4 : r0 + 5, c0 - 4 : c0 + 5] = 1000.0
    resized = resize_like_skimage(center_crop(image), 224)
    weights = resized / resized.sum()
    rr, cc = np.mgrid[:224, :224]
    # Pixel (i, j) of the input has its centre at (j + 0.5, i + 0.5) in image coordinates.
    x, y = geometry.to_source(float((weights * cc).sum()) + 0.5, float((weights * rr).sum()) + 0.5)
    assert (x, y) == pytest.approx((c0 + 0.5, r0 + 0.5), abs=0.5)
    assert geometry.to_input(*geometry.to_source(17.25, 203.5)) == pytest.approx((17.25, 203.5))


def test_map_back_puts_each_input_pixel_on_the_source_pixels_it_came_from():
    geometry = CropGeometry(600, 900, 224)  # centre square: columns 150..749
    grid = np.zeros((224, 224), dtype=np.float32)
    grid[40, 200] = 1.0
    source = geometry.map_to_source(grid)
    assert source.shape == (600, 900)
    row, col = np.unravel_index(int(np.argmax(source)), source.shape)
    scale = 600 / 224
    assert 40 * scale <= row < 41 * scale
    assert 150 + 200 * scale <= col < 150 + 201 * scale
    assert not source[:, :150].any() and not source[:, 750:].any()  # outside what the network saw


def test_a_feature_cell_maps_back_to_its_centre():
    geometry = CropGeometry(1024, 1024, 224)
    cam = np.zeros((7, 7), dtype=np.float32)
    cam[BRIGHT_CELL] = 5.0
    source = geometry.map_to_source(cam)
    row, col = np.unravel_index(int(np.argmax(source)), source.shape)
    x, y = cell_centre_in_source(BRIGHT_CELL)
    assert abs(col + 0.5 - x) <= 1.0 and abs(row + 0.5 - y) <= 1.0


def test_cams_and_logits_come_from_one_pass_and_agree_with_the_network():
    torch.manual_seed(1)
    net = XrvDenseNet121().eval()
    # The installed network gets CAMs in the pipeline; a plain callable (a test oracle) does not.
    assert isinstance(net, FeatureClassifier)
    assert not isinstance(lambda x: x, FeatureClassifier)
    x = torch.randn(1, 1, 224, 224) * 500
    with torch.no_grad():
        logits, cams = features_logits_and_cams(net, x)
        expected = net(x)
    assert cams.shape == (1, 18, 7, 7)
    torch.testing.assert_close(logits, expected)
    # The CAM is the logit spread over the image: its spatial mean plus the bias is the logit.
    torch.testing.assert_close(cams.mean(dim=(2, 3)) + net.classifier.bias, expected, rtol=1e-4, atol=1e-4)


def test_region_is_the_peak_component_above_half_the_maximum():
    rr, cc = np.mgrid[:400, :500]
    peak = 10 * np.exp(-((rr - 120) ** 2 + (cc - 300) ** 2) / (2 * 30.0**2))
    other = 4 * np.exp(-((rr - 300) ** 2 + (cc - 100) ** 2) / (2 * 50.0**2))  # below 50 % of the peak
    activation = (peak + other).astype(np.float32)
    region = activation_region(activation)
    assert region is not None
    assert region[0] == region[-1] and 4 <= len(region) <= MAX_POLYGON_POINTS
    assert point_in_polygon(region, 300.5, 120.5)
    assert not point_in_polygon(region, 100.5, 300.5)
    above = int((activation >= 5).sum())  # the pixels at or above half the maximum
    assert polygon_area(region) == pytest.approx(above, rel=0.03)
    rows, cols = np.nonzero(activation >= 5.2)
    inside = [point_in_polygon(region, c + 0.5, r + 0.5) for r, c in zip(rows, cols, strict=True)]
    assert all(inside)  # the simplified outline still holds every clearly-inside pixel


def test_a_map_without_a_positive_peak_has_no_region():
    assert activation_region(np.zeros((50, 50), dtype=np.float32)) is None
    assert activation_region(-np.ones((50, 50), dtype=np.float32)) is None


def test_oracle_densenet_cam_outlines_the_planted_place(tmp_path):
    path = tmp_path / "planted.dcm"
    write_planted_radiograph(path)
    result = oracle_pipeline().run([path])
    assert isinstance(result, ClassificationResult)
    positives = {f.label: f for f in result.findings if f.positive}
    assert set(positives) == {LABELS[BRIGHT_LABEL], LABELS[DARK_LABEL]}
    for label, cell, other in (
        (BRIGHT_LABEL, BRIGHT_CELL, DARK_CELL),
        (DARK_LABEL, DARK_CELL, BRIGHT_CELL),
    ):
        finding = positives[LABELS[label]]
        assert finding.region is not None and finding.activation is not None
        assert finding.activation.shape == (1024, 1024)
        x, y = cell_centre_in_source(cell)
        assert point_in_polygon(finding.region, x, y)
        assert not point_in_polygon(finding.region, *cell_centre_in_source(other))
        row, col = np.unravel_index(int(np.argmax(finding.activation)), finding.activation.shape)
        assert point_in_polygon(finding.region, col + 0.5, row + 0.5)
        assert abs(col + 0.5 - x) <= 2 and abs(row + 0.5 - y) <= 2  # the peak is where the spot is
    negatives = [f for f in result.findings if not f.positive]
    assert len(negatives) == 16 and all(f.region is None and f.activation is None for f in negatives)
