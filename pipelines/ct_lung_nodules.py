"""``ct-lung-nodules``: MONAI ``lung_nodule_ct_detection`` (v0.6.8) on one CT series.

Stages: ``load`` (DICOM → ``CtVolume``), ``preprocess`` (RAS, 0.703125×0.703125×1.25 mm, bilinear —
the bundle's raw-image path), ``infer`` (a ``Detector``: the bundle's intensity window
``ScaleIntensityRange(-1024, 300 → 0, 1, clip)`` and ``RetinaNetDetector``, whole volume in one pass
unless it exceeds the 512×512×192 patch, then the sliding window), ``postprocess`` (clip boxes to the
image, keep those at or above the manifest's reporting threshold, map them to patient LPS with the
grid's affine — the bundle's ``AffineBoxToWorldCoordinated(affine_lps_to_ras=True)`` — and to the
nearest source slice).

Box coordinates on the grid are continuous voxel indices with voxel centres at integers, the
convention of MONAI's box/affine transforms. Each box is then measured on the source CT
(``pipelines.nodule_measure``): diameters on the axial plane of the longest diameter and the volume
from a threshold segmentation inside the box, or the box's in-plane sides and inscribed ellipsoid,
flagged as such, where that segmentation fails.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from pipelines.base import AnalysisMode, StageTimer
from pipelines.compute import Compute
from pipelines.ct_geometry import model_affine_lps, to_model_grid
from pipelines.findings import Findings, ModelInfo, Nodule, NoduleDetectionResult, Point3D
from pipelines.io import CtVolume, load_ct_series
from pipelines.lung_region import lung_box
from pipelines.nodule_measure import measure_nodule
from pipelines.patient_space import nearest_source_plane

NAME = "ct-lung-nodules"
MODEL_NAME = "monai-lung-nodule-ct-detection"


@dataclass(frozen=True)
class GridDetections:
    """Boxes on the model grid: (N, 6) as x1, y1, z1, x2, y2, z2 voxel indices, and (N,) scores."""

    boxes: npt.NDArray[np.float64]
    scores: npt.NDArray[np.float64]


#: HU volume on the model grid, a (1, X, Y, Z) MetaTensor → detections on that grid.
Detector = Callable[[Any], GridDetections]


@dataclass(frozen=True)
class NoduleSettings:
    """What the manifest says about input geometry and which boxes become findings."""

    spacing_mm: tuple[float, float, float]
    report_score_thresh: float

    @classmethod
    def from_manifest(cls, manifest_data: dict[str, Any]) -> NoduleSettings:
        spacing = manifest_data["input"]["spacing_mm"]
        return cls(
            spacing_mm=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
            report_score_thresh=float(manifest_data["thresholds"]["report_score_thresh"]),
        )


class BundleNoduleDetector:
    """The bundle's inference: intensity window, then ``RetinaNetDetector`` (whole volume or windows)."""

    def __init__(
        self,
        detector: Any,
        manifest_data: dict[str, Any],
        compute: Compute,
        mode: AnalysisMode = AnalysisMode.EXACT,
    ) -> None:
        window = manifest_data["input"]["intensity_window"]
        inference = manifest_data["inference"]
        self.detector = detector
        self.window = (
            float(window["a_min"]),
            float(window["a_max"]),
            float(window["b_min"]),
            float(window["b_max"]),
        )
        self.roi_voxels = int(np.prod(inference["roi_size"]))
        self.force_sliding_window = bool(inference["force_sliding_window"])
        self.spacing_mm = tuple(float(v) for v in manifest_data["input"]["spacing_mm"])
        self.compute = compute
        self.mode = AnalysisMode(mode)

    def __call__(self, image: Any) -> GridDetections:
        a_min, a_max, b_min, b_max = self.window
        hu = torch.as_tensor(image).float()
        origin = np.zeros(3)
        if self.mode is AnalysisMode.FAST:
            box = lung_box(hu[0].numpy(), self.spacing_mm)
            hu = hu[:, slice(*box[0]), slice(*box[1]), slice(*box[2])]
            origin = np.array([lo for lo, _ in box], dtype=np.float64)
        x = ((hu - a_min) / (a_max - a_min) * (b_max - b_min) + b_min).clamp(b_min, b_max)
        # The bundle's scripts/detection_inferer.py: whole image unless it has at least the patch's voxels.
        use_inferer = self.force_sliding_window or x[0].numel() >= self.roi_voxels
        with self.compute.autocast(), warnings.catch_warnings():
            # MONAI 1.6 passes torch sizes through np.ceil (detector_utils.pad_images); NumPy 2 warns.
            warnings.filterwarnings("ignore", "__array_wrap__ must accept context", DeprecationWarning)
            outputs = self.detector([self.compute.to_device(x.contiguous())], use_inferer=use_inferer)
        out = outputs[0]
        boxes = out["box"].detach().float().cpu().numpy().astype(np.float64).reshape(-1, 6)
        return GridDetections(
            boxes=boxes + np.tile(origin, 2),
            scores=out["label_scores"].detach().float().cpu().numpy().astype(np.float64).reshape(-1),
        )


def _point(v: npt.NDArray[np.float64]) -> Point3D:
    """The first three values of ``v`` as a patient point."""
    return (float(v[0]), float(v[1]), float(v[2]))


@dataclass
class LungNoduleDetectionPipeline:
    """CT series → nodules in patient coordinates."""

    model: ModelInfo
    detector: Detector
    settings: NoduleSettings
    name: str = NAME

    def load(self, paths: Sequence[str | Path]) -> CtVolume:
        return load_ct_series(paths)

    def preprocess(self, volume: CtVolume) -> Any:
        return to_model_grid(volume, self.settings.spacing_mm)

    def infer(self, image: Any) -> GridDetections:
        return self.detector(image)

    def postprocess(self, volume: CtVolume, image: Any, detections: GridDetections) -> NoduleDetectionResult:
        affine = model_affine_lps(image)
        size = np.array(image.shape[1:], dtype=np.float64)
        nodules = []
        order = np.argsort(-detections.scores, kind="stable")
        for i in order:
            score = float(detections.scores[i])
            if score < self.settings.report_score_thresh:
                continue
            lo = np.clip(detections.boxes[i, :3], 0.0, size)
            hi = np.clip(detections.boxes[i, 3:], 0.0, size)
            if np.any(hi <= lo):
                continue  # ClipBoxToImage(remove_empty=True)
            nodules.append(measure_nodule(volume, self._nodule(volume, affine, lo, hi, score)))
        return NoduleDetectionResult(
            model=self.model,
            series_instance_uid=volume.series_instance_uid,
            frame_of_reference_uid=volume.frame_of_reference_uid,
            source_images=volume.source_images,
            nodules=tuple(nodules),
        )

    @staticmethod
    def _nodule(
        volume: CtVolume,
        affine: npt.NDArray[np.float64],
        lo: npt.NDArray[np.float64],
        hi: npt.NDArray[np.float64],
        score: float,
    ) -> Nodule:
        corners = np.array(
            [[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
        )
        world = (affine @ corners.T).T[:, :3]
        centre = affine @ np.array([*((lo + hi) / 2.0), 1.0])
        sides = (hi - lo) * np.linalg.norm(affine[:3, :3], axis=0)
        column, row, _ = volume.voxel_index(centre[:3])
        k = nearest_source_plane(volume, centre[:3])  # a tie goes the same way for every slice order
        return Nodule(
            center=_point(centre),
            box_min=_point(world.min(axis=0)),
            box_max=_point(world.max(axis=0)),
            long_axis_mm=float(sides.max()),
            volume_mm3=float(math.pi / 6.0 * np.prod(sides)),
            confidence=min(max(score, 0.0), 1.0),
            source_slice=volume.source_images[k],
            center_pixel=(column, row),
        )

    def run_timed(self, paths: Sequence[str | Path]) -> tuple[Findings, dict[str, float]]:
        timer = StageTimer()
        volume = timer("load", lambda: self.load(paths))
        image = timer("preprocess", lambda: self.preprocess(volume))
        detections = timer("inference", lambda: self.infer(image))
        result = timer("postprocess", lambda: self.postprocess(volume, image, detections))
        return result, timer.seconds

    def run(self, paths: Sequence[str | Path]) -> Findings:
        return self.run_timed(paths)[0]
