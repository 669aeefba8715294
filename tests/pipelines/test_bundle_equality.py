"""Our CT pipelines compute what the published MONAI bundles' own ``inference.json`` computes.

Each bundle's config (from ``$DICOM_NODE_REFERENCE/monai-bundles``, the ``bundle_reference`` fixture)
runs through MONAI's ``ConfigParser`` and its own transforms, inferer, evaluator or detector, with
only the overrides ``pipelines.bundle_reference`` lists, on the shared 20-slice CT
(tests/data/ct/totalseg_dicom) read once by our reader and written as NIfTI-2 in tmp (the bundles read
NIfTI; MONAI's DICOM-series reading goes through ITK, which is not installed). The SAME weights file is
loaded by both sides: a ``models scaffold`` file (untrained, deterministic, seeded), so equality here
proves that the computation is the bundle's, not that the output is clinically right.

To make the equality non-trivial with untrained weights: the label map must hold several labels, and for
the detector the scaffold's classification bias is set to 0 (RetinaNet initialises it to the prior
−log(99), so every untrained score is ≈ 0.01, below the box selector's 0.02) in the one file both sides
load: scores then spread around 0.5, boxes pass the bundle's own threshold and some our reporting one.
(Scaling the head's weights ×100 as well saturates every score at 1.0: ties, no test of the scores.)

Each side runs once per module (torch threads = CPU cores); the vertebra network dominates the time.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from models.installer import import_weights, scaffold
from models.loader import forget_warm_models, weights_path
from pipelines import bundle_reference as ref
from pipelines.compute import select_compute
from pipelines.ct_geometry import labels_to_patient_grid_by_inverse, model_affine_lps
from pipelines.ct_lung_nodules import LungNoduleDetectionPipeline
from pipelines.ct_vertebrae import VertebraSegmentationPipeline, largest_components
from pipelines.findings import NoduleDetectionResult, SegmentationResult
from pipelines.io import load_ct_series
from pipelines.patient_space import PatientSpace
from pipelines.registry import get_pipeline
from tests.conftest import CT_DIR, REPO

pytestmark = [
    pytest.mark.slow,
    # The bundle configs' own Orientationd (no ``labels``) and evaluator (``torch.autocast("cuda")`` on
    # a CPU-only torch) warn; those warnings are MONAI's about the published configs, not ours.
    pytest.mark.filterwarnings("ignore:.*Orientationd.__init__.labels.*:FutureWarning"),
    pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*nvImageCodec.*:UserWarning"),
]
WHOLEBODY = "monai-wholebody-ct-segmentation"
NODULES = "monai-lung-nodule-ct-detection"


def _models_dir(root: Path) -> Path:
    target = root / "models"
    shutil.copytree(
        REPO / "models", target, ignore=shutil.ignore_patterns("*.py", "__pycache__", "models", "downloads")
    )
    return target


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, bundle_reference):
    torch.set_num_threads(os.cpu_count() or 1)
    root = tmp_path_factory.mktemp("bundle-equality")
    paths = sorted(CT_DIR.glob("*.dcm"))
    volume = load_ct_series(paths)
    nifti = ref.write_nifti(volume, root / "ct" / "ct.nii.gz")
    forget_warm_models()
    yield {"root": root, "paths": paths, "volume": volume, "nifti": nifti, "bundles": bundle_reference}
    forget_warm_models()


@pytest.fixture(scope="module")
def vertebrae(workspace):
    root = workspace["root"]
    models_dir = _models_dir(root / "wholebody")
    import_weights(scaffold(WHOLEBODY, root / "wholebody.pt"), models_dir)
    weights = weights_path(models_dir, WHOLEBODY)
    bundle = ref.run_wholebody_bundle(
        workspace["bundles"], weights, workspace["nifti"], root / "wholebody-out"
    )
    pipeline = get_pipeline("ct-vertebrae", models_dir, select_compute("cpu"), allow_untrained=True)
    assert isinstance(pipeline, VertebraSegmentationPipeline)
    volume = pipeline.load(workspace["paths"])
    image = pipeline.preprocess(volume)
    labels = pipeline.infer(image)
    space = PatientSpace.of(volume)
    all_labels = labels_to_patient_grid_by_inverse(labels, image, space)
    result = pipeline.postprocess(volume, image, labels)
    return {
        "bundle": bundle.label_map,
        "ours": all_labels,
        "result": result,
        "pipeline": pipeline,
        "space": space,
    }


def test_vertebra_label_map_equals_the_bundles_voxel_for_voxel(vertebrae):
    bundle, ours = vertebrae["bundle"], vertebrae["ours"]
    assert bundle.shape == ours.shape
    present = np.unique(bundle)
    assert len(present) >= 3, f"the untrained network gave only labels {present}: equality would be trivial"
    differing = int((bundle != ours).sum())
    assert differing == 0, f"{differing} of {bundle.size} voxels differ from the bundle's label map"


def test_vertebra_result_is_the_bundle_output_reduced_to_the_vertebrae(vertebrae):
    """Our findings' label map is the bundle's label map with the kept labels' largest components."""
    pipeline, space, result = vertebrae["pipeline"], vertebrae["space"], vertebrae["result"]
    assert isinstance(result, SegmentationResult)
    kept = sorted(pipeline.settings.kept_labels)
    bundle_kept = np.where(np.isin(vertebrae["bundle"], kept), vertebrae["bundle"], 0).astype(np.uint16)
    expected = largest_components(
        bundle_kept, kept, pipeline.settings.min_component_mm3 / space.voxel_volume_mm3
    )
    np.testing.assert_array_equal(result.label_map, space.to_source(expected))


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
    models_dir = _models_dir(root / "nodules")
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
