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

import numpy as np
import pytest

from models.installer import import_weights, scaffold
from models.loader import weights_path
from pipelines import bundle_reference as ref
from pipelines.compute import select_compute
from pipelines.ct_geometry import labels_to_patient_grid_by_inverse
from pipelines.ct_vertebrae import VertebraSegmentationPipeline, largest_components
from pipelines.findings import SegmentationResult
from pipelines.patient_space import PatientSpace
from pipelines.registry import get_pipeline
from tests.pipelines.bundle_workspace import MARKS, WHOLEBODY, models_folder, workspace

pytestmark = MARKS
__all__ = ["workspace"]  # the module-scoped fixture both files use


@pytest.fixture(scope="module")
def vertebrae(workspace):
    root = workspace["root"]
    models_dir = models_folder(root / "wholebody")
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
