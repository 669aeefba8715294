"""``cxr-classification``: TorchXRayVision ``densenet121-res224-all`` on one frontal chest radiograph.

Preprocessing follows the library (torchxrayvision 1.5.7 ``normalize``, ``XRayCenterCrop``): scale to
[-1024, 1024] over the image's storable range, centre crop to a square (start ``size//2 − crop//2``),
resize to 224×224 the way ``skimage.transform.resize(..., mode="constant", preserve_range=True)`` does
(Gaussian anti-aliasing σ = (factor − 1)/2, then bilinear ``zoom`` in grid mode, clipped to the input
range) — reimplemented on SciPy, which skimage itself calls. Output: sigmoid then ``op_norm``, so each
label's operating threshold lands on 0.5 (the library's default output). That output is a calibrated
score (``ScoreKind.CALIBRATED``, threshold 0.5), not a probability, and is reported as such.

Each positive finding also gets its class activation map on the source grid and the outline of the
region that drives it (``pipelines.cam``), when the classifier is a DenseNet with a feature layer (the
installed network always is; plain callables, such as test oracles, give findings without a place).

One deliberate difference from ``xrv.utils.read_xray_dcm``: when the DICOM image has a VOI LUT or
window, it is applied (the training images were mostly display-windowed JPEG/PNG exports);
``read_xray_dcm`` ignores it by default. Lateral views are refused, and so are images whose view is
not stated, because the model was trained on frontal views only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from scipy import ndimage

from pipelines.base import StageTimer
from pipelines.cam import CropGeometry, FeatureClassifier, activation_region, features_logits_and_cams
from pipelines.compute import Compute
from pipelines.errors import PipelineError, PipelineInputError
from pipelines.findings import (
    ClassificationFinding,
    ClassificationResult,
    Findings,
    ModelInfo,
    ScoreKind,
)
from pipelines.io import Radiograph, load_radiograph

NAME = "cxr-classification"
MODEL_NAME = "txrv-densenet121-res224-all"
INPUT_SIZE = 224
FRONTAL_VIEWS = ("PA", "AP")

#: (N, 1, 224, 224) in [-1024, 1024] → (N, 18) logits.
Classifier = Callable[[torch.Tensor], torch.Tensor]


def normalize_to_txrv_range(
    image: npt.NDArray[np.float32], value_range: tuple[float, float]
) -> npt.NDArray[np.float32]:
    """``(2 · (x − lo)/(hi − lo) − 1) · 1024``, xrv's ``normalize`` with ``maxval`` = the range's top."""
    lo, hi = value_range
    if hi <= lo:
        raise PipelineInputError("the image has an empty value range (BitsStored or LUT descriptor wrong)")
    scaled = (2.0 * ((image.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)) - 1.0) * 1024.0
    return scaled.astype(np.float32)


def center_crop(image: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """``xrv.datasets.XRayCenterCrop`` on a (rows, columns) image."""
    rows, cols = image.shape
    size = min(rows, cols)
    top = rows // 2 - size // 2
    left = cols // 2 - size // 2
    return image[top : top + size, left : left + size]


def resize_like_skimage(image: npt.NDArray[np.float32], size: int) -> npt.NDArray[np.float32]:
    """``skimage.transform.resize(img[None], (1, size, size), mode="constant", preserve_range=True)``."""
    factors = np.array(image.shape, dtype=np.float64) / size
    filtered = image
    if np.any(factors > 1):
        sigma = np.maximum(0.0, (factors - 1.0) / 2.0)
        filtered = ndimage.gaussian_filter(image, sigma, cval=0.0, mode="constant")
    out = ndimage.zoom(filtered, 1.0 / factors, order=1, mode="grid-constant", cval=0.0, grid_mode=True)
    result: npt.NDArray[np.float32] = np.clip(out, image.min(), image.max()).astype(np.float32)
    return result


def txrv_input(radiograph: Radiograph) -> torch.Tensor:
    """The (1, 1, 224, 224) network input for one radiograph."""
    scaled = normalize_to_txrv_range(radiograph.pixels, radiograph.value_range)
    resized = resize_like_skimage(center_crop(scaled), INPUT_SIZE)
    return torch.from_numpy(resized)[None, None]


@dataclass(frozen=True)
class Inference:
    """The logits of one image (labels,) and, for a DenseNet, each label's CAM (labels, h, w)."""

    logits: torch.Tensor
    cams: torch.Tensor | None = None


def op_norm(probabilities: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """TorchXRayVision's calibration (see ``models.txrv_densenet.op_norm``)."""
    from models.txrv_densenet import op_norm as _op_norm

    return _op_norm(probabilities, thresholds)


@dataclass
class CxrClassificationPipeline:
    """Frontal chest radiograph → 18 calibrated findings."""

    model: ModelInfo
    classifier: Classifier
    labels: tuple[str, ...]
    op_thresholds: tuple[float, ...]
    compute: Compute
    name: str = NAME

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.op_thresholds):
            raise ValueError('Arguments "labels" and "op_thresholds" must have the same length.')

    def load(self, paths: Sequence[str | Path]) -> Radiograph:
        if len(paths) != 1:
            raise PipelineInputError(f"{NAME} analyses one radiograph at a time, got {len(paths)} images")
        radiograph = load_radiograph(paths[0])
        if radiograph.view_position not in FRONTAL_VIEWS:
            stated = radiograph.view_position or "not stated (ViewPosition is empty)"
            raise PipelineInputError(
                f"view position is {stated}: {MODEL_NAME} was trained on frontal (PA/AP) chest "
                "radiographs only"
            )
        return radiograph

    def preprocess(self, radiograph: Radiograph) -> torch.Tensor:
        return txrv_input(radiograph)

    def infer(self, image: torch.Tensor) -> Inference:
        return self.infer_batch([image])[0]

    def infer_batch(self, images: Sequence[torch.Tensor]) -> list[Inference]:
        """One pass of the network over the (1, 1, 224, 224) inputs of several radiographs."""
        if not images:
            return []
        with self.compute.autocast():
            x = self.compute.to_device(torch.cat(list(images)))
            if isinstance(self.classifier, FeatureClassifier):
                logits, cams = features_logits_and_cams(self.classifier, x)
                logits, cams = logits.float().cpu(), cams.float().cpu()
                return [Inference(logits[n], cams[n]) for n in range(len(images))]
            logits = self.classifier(x).float().cpu()
        return [Inference(logits[n]) for n in range(len(images))]

    def postprocess(self, radiograph: Radiograph, inference: Inference) -> ClassificationResult:
        logits = inference.logits
        calibrated = op_norm(torch.sigmoid(logits), torch.tensor(self.op_thresholds, dtype=torch.float32))
        rows, columns = radiograph.pixels.shape
        geometry = CropGeometry(rows, columns, INPUT_SIZE)
        findings = []
        # op_norm puts each label's operating threshold at 0.5: a calibrated score, not a probability.
        for k, (label, p) in enumerate(zip(self.labels, calibrated.tolist(), strict=True)):
            finding = ClassificationFinding(label=label, score=float(np.clip(p, 0.0, 1.0)), threshold=0.5)
            if finding.positive and inference.cams is not None:
                activation = geometry.map_to_source(inference.cams[k].numpy())
                finding = ClassificationFinding(
                    label=label,
                    score=finding.score,
                    threshold=finding.threshold,
                    region=activation_region(activation),
                    activation=activation,
                )
            findings.append(finding)
        return ClassificationResult(
            model=self.model,
            source=radiograph.source,
            findings=tuple(findings),
            score_kind=ScoreKind.CALIBRATED,
        )

    def run_timed(self, paths: Sequence[str | Path]) -> tuple[Findings, dict[str, float]]:
        timer = StageTimer()
        radiograph = timer("load", lambda: self.load(paths))
        image = timer("preprocess", lambda: self.preprocess(radiograph))
        inference = timer("inference", lambda: self.infer(image))
        result = timer("postprocess", lambda: self.postprocess(radiograph, inference))
        return result, timer.seconds

    def run(self, paths: Sequence[str | Path]) -> Findings:
        return self.run_timed(paths)[0]

    def run_batch(self, studies: Sequence[Sequence[str | Path]]) -> list[Findings | PipelineError]:
        """Several radiographs (each its own ``paths``, e.g. from several studies) in one network pass.

        What a worker calls when several ``cxr-classification`` jobs are queued together: each
        radiograph is loaded and preprocessed alone, the network runs once over all of them (on a GPU
        the batch costs about as much as one image), and each gets its own result — or, in its place,
        the ``PipelineError`` that refused it (a lateral view, an unreadable file), so one bad image
        fails only its own job. Results equal ``run`` on each alone to float tolerance.
        """
        refused: dict[int, PipelineError] = {}
        ready: list[tuple[int, Radiograph, torch.Tensor]] = []
        for index, paths in enumerate(studies):
            try:
                radiograph = self.load(paths)
                ready.append((index, radiograph, self.preprocess(radiograph)))
            except PipelineError as error:
                refused[index] = error
        inferences = self.infer_batch([image for _, _, image in ready])
        analysed: dict[int, Findings] = {
            index: self.postprocess(radiograph, inference)
            for (index, radiograph, _), inference in zip(ready, inferences, strict=True)
        }
        return [analysed[i] if i in analysed else refused[i] for i in range(len(studies))]
