"""Chest radiograph preprocessing and calibration, and the refusal of lateral views."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import torch
from pydicom.uid import ExplicitVRLittleEndian

from pipelines.compute import select_compute
from pipelines.cxr_classification import (
    CxrClassificationPipeline,
    center_crop,
    op_norm,
    resize_like_skimage,
    txrv_input,
)
from pipelines.errors import PipelineInputError
from pipelines.findings import ModelInfo, ScoreKind
from pipelines.io import load_radiograph
from tests.conftest import CXR

LABELS = tuple(f"label{i}" for i in range(18))
THRESHOLDS = tuple(np.linspace(0.01, 0.2, 18).tolist())


def oracle_classifier(image: torch.Tensor) -> torch.Tensor:
    """Oracle: logits that are a known function of the input (its mean, shifted per label)."""
    return image.mean(dim=(1, 2, 3))[:, None] / 1024 + torch.arange(18, dtype=torch.float32) - 9


def pipeline() -> CxrClassificationPipeline:
    return CxrClassificationPipeline(
        model=ModelInfo("oracle", "test-oracle"),
        classifier=oracle_classifier,
        labels=LABELS,
        op_thresholds=THRESHOLDS,
        compute=select_compute("cpu"),
    )


def test_input_is_224_square_in_txrv_range():
    x = txrv_input(load_radiograph(CXR))
    assert tuple(x.shape) == (1, 1, 224, 224)
    assert float(x.min()) >= -1024.0 and float(x.max()) <= 1024.0


def test_center_crop_follows_xrv_indexing():
    image = np.arange(5 * 8, dtype=np.float32).reshape(5, 8)
    np.testing.assert_array_equal(center_crop(image), image[:, 2:7])  # 8//2 - 5//2 = 2


def test_resize_matches_skimage_when_available():
    skimage_transform = pytest.importorskip("skimage.transform")
    image = np.random.default_rng(0).uniform(-1024, 1024, (700, 700)).astype(np.float32)
    reference = skimage_transform.resize(image[None], (1, 224, 224), mode="constant", preserve_range=True)
    np.testing.assert_array_equal(resize_like_skimage(image, 224), reference[0].astype(np.float32))


def test_op_norm_maps_each_threshold_to_one_half():
    t = torch.tensor([0.1, 0.5, 0.02, float("nan")])
    assert op_norm(t.nan_to_num(0.3)[None], t)[0].tolist() == pytest.approx([0.5, 0.5, 0.5, 0.5])
    p = torch.tensor([[0.05, 0.75]])
    assert op_norm(p, torch.tensor([0.1, 0.5]))[0].tolist() == pytest.approx([0.25, 0.75])


def test_pipeline_outputs_calibrated_findings_for_every_label():
    result = pipeline().run([CXR])
    assert [f.label for f in result.findings] == list(LABELS)
    assert all(f.threshold == 0.5 for f in result.findings)
    x = txrv_input(load_radiograph(CXR))
    expected = op_norm(torch.sigmoid(oracle_classifier(x)), torch.tensor(THRESHOLDS))[0]
    assert [f.score for f in result.findings] == pytest.approx(expected.tolist(), abs=1e-6)
    assert result.score_kind == ScoreKind.CALIBRATED  # op_norm's output is no probability
    assert result.source.sop_instance_uid == pydicom.dcmread(CXR).SOPInstanceUID


@pytest.mark.parametrize(("view", "message"), [("LL", "view position is LL"), ("", "not stated")])
def test_lateral_or_unknown_views_are_refused(tmp_path, view, message):
    ds = pydicom.dcmread(CXR)
    stored = ds.pixel_array
    ds.ViewPosition = view
    ds.PixelData = stored.astype(np.uint8).tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "lateral.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(PipelineInputError, match=message):
        pipeline().run([path])
