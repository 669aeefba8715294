"""Several radiographs in one network pass give what each gives alone (``run_batch``).

The network is the real TorchXRayVision DenseNet-121 architecture with untrained scaffold weights
(``models scaffold``): the test is about the batching arithmetic, not about findings. Three frontal
radiographs, written as three studies from the real test image (as stored, mirrored, and with a
brighter band), and a lateral one that is refused in its own place without failing the others.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from models.installer import import_weights, scaffold
from models.loader import forget_warm_models
from pipelines.compute import select_compute
from pipelines.cxr_classification import CxrClassificationPipeline
from pipelines.errors import PipelineInputError
from pipelines.findings import ClassificationResult
from pipelines.registry import get_pipeline
from tests.conftest import CXR, REPO


def _study(tmp_path: Path, name: str, pixels: np.ndarray, view: str = "PA") -> Path:
    ds = pydicom.dcmread(CXR)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (
        generate_uid(),
        generate_uid(),
        generate_uid(),
    )
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.ViewPosition = view
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.SamplesPerPixel = 1
    ds.PixelData = np.ascontiguousarray(pixels.astype(np.uint8)).tobytes()
    ds.Rows, ds.Columns = pixels.shape
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> CxrClassificationPipeline:
    root = tmp_path_factory.mktemp("cxr-batch")
    models_dir = root / "models"
    shutil.copytree(
        REPO / "models",
        models_dir,
        ignore=shutil.ignore_patterns("*.py", "__pycache__", "models", "downloads"),
    )
    name = "txrv-densenet121-res224-all"
    import_weights(scaffold(name, root / "scaffold.pt"), models_dir)
    forget_warm_models()
    built = get_pipeline("cxr-classification", models_dir, select_compute("cpu"), allow_untrained=True)
    assert isinstance(built, CxrClassificationPipeline)
    yield built
    forget_warm_models()


def test_a_batch_of_three_studies_equals_three_single_runs(pipeline, tmp_path):
    stored = pydicom.dcmread(CXR).pixel_array
    assert stored.ndim == 2, "the test radiograph is expected to be single-channel"
    brighter = stored.astype(np.int32)
    brighter[: stored.shape[0] // 3] = np.minimum(brighter[: stored.shape[0] // 3] + 40, 255)
    studies = [
        [_study(tmp_path, "as-stored", stored)],
        [_study(tmp_path, "lateral", stored, view="LL")],
        [_study(tmp_path, "mirrored", stored[:, ::-1])],
        [_study(tmp_path, "brighter", brighter)],
    ]
    batch = pipeline.run_batch(studies)

    assert len(batch) == 4
    assert isinstance(batch[1], PipelineInputError) and "view position is LL" in str(batch[1])
    single_scores = []
    for outcome, paths in zip(batch, studies, strict=True):
        if isinstance(outcome, PipelineInputError):
            continue
        single = pipeline.run(paths)
        assert isinstance(outcome, ClassificationResult) and isinstance(single, ClassificationResult)
        assert outcome.source == single.source
        assert [f.label for f in outcome.findings] == [f.label for f in single.findings]
        scores = [f.score for f in single.findings]
        assert [f.score for f in outcome.findings] == pytest.approx(scores, abs=1e-5)
        for ours, alone in zip(outcome.findings, single.findings, strict=True):
            assert ours.positive == alone.positive
            if alone.activation is not None:
                assert ours.activation is not None
                np.testing.assert_allclose(ours.activation, alone.activation, rtol=1e-4, atol=1e-4)
        single_scores.append(scores)
    # Non-trivial: the three inputs differ, and so do their scores.
    assert single_scores[0] != single_scores[1] != single_scores[2]


def test_an_empty_batch_is_empty(pipeline):
    assert pipeline.run_batch([]) == []
