"""Class activation maps (CAM) of the radiograph classifier, on the source radiograph's pixel grid.

The CAM of a label is the classifier's weight vector for that label dotted with the final feature maps
(after the last batch norm and ReLU, the 1024 × 7 × 7 tensor the DenseNet pools), as CheXNet (Rajpurkar
et al. 2017) and TorchXRayVision show them; it is the plain CAM (Zhou et al. 2016), not Grad-CAM, and
leaves the bias out. Its spatial mean plus the bias is the label's logit, so each value is the share of
the logit that place contributes (unitless).

The 7 × 7 map is put back on the source grid by undoing the preprocessing exactly: each feature cell
covers 32 × 32 pixels of the 224 × 224 input, which is the centre square of the source (``centre_crop``)
scaled by ``size / 224``; bilinear interpolation with pixel centres at half-integers (``align_corners``
false, the same grid convention as the resize) lands each cell centre where it came from. Outside the
centre square (non-square images) the network saw nothing and the map is 0.

The region that drives a finding: the pixels whose value is at least ``REGION_FRACTION`` (50 %) of the
map's maximum, the 4-connected component holding that maximum (so that the map's peak always lies in
it), holes filled; its outline is traced along pixel edges and simplified (Douglas–Peucker) to at most
``MAX_POLYGON_POINTS`` points. Coordinates are (column, row) with (0, 0) the top-left corner of the
top-left pixel — DICOM SCOORD image coordinates, so pixel (r, c) has its centre at (c + 0.5, r + 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from pipelines.findings import Polygon

REGION_FRACTION = 0.5
MAX_POLYGON_POINTS = 48  # the closing point included


@runtime_checkable
class FeatureClassifier(Protocol):
    """A DenseNet-style network: ``features`` (→ N × C × h × w before ReLU) and a linear ``classifier``."""

    @property
    def features(self) -> nn.Module: ...

    @property
    def classifier(self) -> nn.Linear: ...


@dataclass(frozen=True)
class CropGeometry:
    """Where the network's square input lies on the source image (``center_crop`` then resize)."""

    rows: int
    columns: int
    input_size: int

    @property
    def size(self) -> int:
        return min(self.rows, self.columns)

    @property
    def top(self) -> int:
        return self.rows // 2 - self.size // 2

    @property
    def left(self) -> int:
        return self.columns // 2 - self.size // 2

    def to_source(self, column: float, row: float) -> tuple[float, float]:
        """A point of the ``input_size`` grid → the source, both in image coordinates (corner at 0, 0)."""
        scale = self.size / self.input_size
        return self.left + column * scale, self.top + row * scale

    def to_input(self, column: float, row: float) -> tuple[float, float]:
        """Inverse of :meth:`to_source`."""
        scale = self.input_size / self.size
        return (column - self.left) * scale, (row - self.top) * scale

    def map_to_source(self, grid_map: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """A map on any square grid over the network input (7 × 7 CAM, 224 × 224) → the source grid."""
        if grid_map.ndim != 2 or grid_map.shape[0] != grid_map.shape[1]:
            raise ValueError(f'Argument "grid_map" must be a square 2D map, got shape {grid_map.shape}.')
        square = F.interpolate(
            torch.from_numpy(np.ascontiguousarray(grid_map, dtype=np.float32))[None, None],
            size=(self.size, self.size),
            mode="bilinear",
            align_corners=False,
        )[0, 0].numpy()
        out = np.zeros((self.rows, self.columns), dtype=np.float32)
        out[self.top : self.top + self.size, self.left : self.left + self.size] = square
        return out


def features_logits_and_cams(
    network: FeatureClassifier, image: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, labels) logits and (N, labels, h, w) CAMs from one pass through the feature layers.

    The logits are what ``XrvDenseNet121.forward`` returns: ReLU, global average pool, classifier.
    """
    features = F.relu(network.features(image))
    logits = network.classifier(F.adaptive_avg_pool2d(features, (1, 1)).flatten(1))
    cams = torch.einsum("kc,nchw->nkhw", network.classifier.weight.to(features.dtype), features)
    return logits, cams


def _outline(component: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
    """The outer boundary of one 4-connected component without holes, along pixel edges, as corners.

    Every inside pixel contributes its edges that face outside, directed clockwise on screen; in such
    a component every corner has one outgoing edge, so following them visits the whole outline once.
    """
    m = np.pad(component, 1)
    inside = m[1:-1, 1:-1]
    nexts: dict[tuple[int, int], tuple[int, int]] = {}
    for outside, start, end in (
        (~m[:-2, 1:-1], (0, 0), (1, 0)),  # top edge, left to right
        (~m[1:-1, 2:], (1, 0), (1, 1)),  # right edge, downwards
        (~m[2:, 1:-1], (1, 1), (0, 1)),  # bottom edge, right to left
        (~m[1:-1, :-2], (0, 1), (0, 0)),  # left edge, upwards
    ):
        rows, cols = np.nonzero(inside & outside)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            nexts[(c + start[0], r + start[1])] = (c + end[0], r + end[1])
    first = min(nexts)
    points = [first]
    point = nexts[first]
    while point != first:
        points.append(point)
        point = nexts[point]
    corners = np.array(points, dtype=np.float64)
    # Keep only the corners where the direction changes.
    before = corners - np.roll(corners, 1, axis=0)
    after = np.roll(corners, -1, axis=0) - corners
    turn = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    kept: npt.NDArray[np.float64] = corners[turn != 0]
    return kept


def _douglas_peucker(points: npt.NDArray[np.float64], tolerance: float) -> npt.NDArray[np.bool_]:
    """Which points of an open polyline Douglas–Peucker keeps at ``tolerance``."""
    keep = np.zeros(len(points), dtype=bool)
    keep[0] = keep[-1] = True
    stack = [(0, len(points) - 1)]
    while stack:
        first, last = stack.pop()
        if last - first < 2:
            continue
        a, b = points[first], points[last]
        segment = b - a
        length = float(np.hypot(*segment))
        between = points[first + 1 : last] - a
        if length == 0.0:
            distances = np.hypot(between[:, 0], between[:, 1])
        else:
            distances = np.abs(segment[0] * between[:, 1] - segment[1] * between[:, 0]) / length
        k = int(np.argmax(distances))
        if distances[k] > tolerance:
            split = first + 1 + k
            keep[split] = True
            stack.extend([(first, split), (split, last)])
    return keep


def simplify_closed(corners: npt.NDArray[np.float64], max_points: int) -> npt.NDArray[np.float64]:
    """A closed polygon (first point repeated last) of at most ``max_points`` points from ``corners``."""
    if max_points < 4:
        raise ValueError(f'Argument "max_points" must be at least 4, got {max_points}.')
    # Split the loop at the corner farthest from the first, so both halves are open polylines.
    far = int(np.argmax(np.hypot(*(corners - corners[0]).T)))
    loop = np.vstack([corners, corners[:1]])
    tolerance = 0.5
    while True:
        halves = (loop[: far + 1], loop[far:])
        kept = [half[_douglas_peucker(half, tolerance)] for half in halves]
        polygon = np.vstack([kept[0], kept[1][1:]])
        if len(polygon) <= max_points:
            return polygon
        tolerance *= 1.5


def activation_region(
    activation: npt.NDArray[np.float32],
    fraction: float = REGION_FRACTION,
    max_points: int = MAX_POLYGON_POINTS,
) -> Polygon | None:
    """The outline of the region that drives the map (module docstring); None if the map has no peak."""
    peak = float(np.max(activation)) if activation.size else 0.0
    if not np.isfinite(peak) or peak <= 0.0:
        return None
    labels, _ = ndimage.label(activation >= fraction * peak)
    peak_label = labels[np.unravel_index(int(np.argmax(activation)), activation.shape)]
    component = ndimage.binary_fill_holes(labels == peak_label)
    polygon = simplify_closed(_outline(np.asarray(component, dtype=bool)), max_points)
    return tuple((float(x), float(y)) for x, y in polygon)


def point_in_polygon(polygon: Polygon, x: float, y: float) -> bool:
    """Even–odd rule: whether (x, y) lies inside the closed ``polygon`` (tests and readers)."""
    inside = False
    points = list(polygon)
    for (x1, y1), (x2, y2) in zip(points, points[1:] + points[:1], strict=True):
        if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
    return inside
