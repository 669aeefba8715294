"""Our lung nodule pipeline gives the boxes and scores of the published bundle's own detector.

The vertebra half, and how both sides are run: tests/pipelines/test_bundle_equality.py.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from models.installer import import_weights, scaffold
from models.loader import weights_path
from pipelines import bundle_reference as ref
from pipelines.compute import select_compute
from pipelines.ct_geometry import model_affine_lps
from pipelines.ct_lung_nodules import LungNoduleDetectionPipeline
from pipelines.findings import NoduleDetectionResult
from pipelines.registry import get_pipeline
from tests.pipelines.bundle_workspace import MARKS, NODULES, models_folder, workspace

pytestmark = MARKS
__all__ = ["workspace"]  # the module-scoped fixture both files use


def _boosted_detector_weights(root: Path) -> Path:
    """The scaffold with its classification bias at 0 (prior 0.5 instead of 0.01): boxes pass 0.02."""
    path = scaffold(NODULES, root / "nodules-scaffold.pt")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state["classification_head.cls_logits.bias"] = torch.full_like(
        state["classification_head.cls_logits.bias"], -2.0
    )
    boosted = root / "nodules-boosted.pt"
    torch.save(state, boosted)
    return boosted


@pytest.fixture(scope="module")
def nodules(workspace):
    root = workspace["root"]
    models_dir = models_folder(root / "nodules")
    import_weights(_boosted_detector_weights(root), models_dir)
    weights = weights_path(models_dir, NODULES)
    bundle = ref.run_lung_nodule_bundle(
        workspace["bundles"], weights, workspace["nifti"], root / "nodules-out"
    )
    pipeline = get_pipeline("ct-lung-nodules", models_dir, select_compute("cpu"), allow_untrained=True)
    assert isinstance(pipeline, LungNoduleDetectionPipeline)
    volume = pipeline.load(workspace["paths"])
    image = pipeline.preprocess(volume)
    with warnings.catch_warnings():
        detections = pipeline.infer(image)
    result = pipeline.postprocess(volume, image, detections)
    centres, sizes, kept = ref.boxes_to_lps(detections.boxes, model_affine_lps(image), image.shape[1:])
    return {
        "bundle": bundle,
        "centres": centres,
        "sizes": sizes,
        "scores": detections.scores[kept],
        "result": result,
        "report": pipeline.settings.report_score_thresh,
    }


def test_nodule_boxes_and_scores_equal_the_bundle_detectors(nodules):
    bundle = nodules["bundle"]
    assert len(bundle.scores) >= 5, "too few boxes above the bundle's threshold: equality would be trivial"
    assert np.ptp(bundle.scores) > 1e-3, "the bundle's scores are all equal: their equality would be trivial"
    assert len(nodules["scores"]) == len(bundle.scores)
    np.testing.assert_allclose(nodules["scores"], bundle.scores, rtol=0, atol=1e-5)
    np.testing.assert_allclose(nodules["centres"], bundle.centers_lps, rtol=0, atol=1e-3)
    np.testing.assert_allclose(nodules["sizes"], bundle.sizes_mm, rtol=0, atol=1e-3)


def test_reported_nodules_are_the_bundle_boxes_above_the_reporting_threshold(nodules):
    bundle, result = nodules["bundle"], nodules["result"]
    assert isinstance(result, NoduleDetectionResult)
    chosen = bundle.scores >= nodules["report"]
    assert chosen.any(), "no bundle box reaches the reporting threshold: the check would be trivial"
    order = np.argsort(-bundle.scores[chosen], kind="stable")
    expected_centres = bundle.centers_lps[chosen][order]
    assert len(result.nodules) == int(chosen.sum())
    np.testing.assert_allclose([n.center for n in result.nodules], expected_centres, rtol=0, atol=1e-3)
    np.testing.assert_allclose(
        [n.confidence for n in result.nodules], np.clip(bundle.scores[chosen][order], 0, 1), atol=1e-5
    )
