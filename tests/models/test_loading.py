"""Installing and loading weights: published formats load and run; wrong checksum or architecture is
refused with a message that says what to do."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
import torch
from pydicom.uid import ExplicitVRLittleEndian

from models.architectures import build_network
from models.errors import ArchitectureMismatchError, ChecksumMismatchError, UnrecognisedWeightsError
from models.installer import _txrv_class_path, import_weights, scaffold
from models.legacy_writer import write_legacy_pickled_module
from models.loader import file_hashes, load_model, verify_model, weights_path
from models.registry import model_statuses
from pipelines.errors import PipelineNotInstalledError
from pipelines.findings import ClassificationResult, NoduleDetectionResult, SegmentationResult
from pipelines.registry import PIPELINE_NAMES, get_pipeline
from tests.conftest import CXR
from tests.pipelines.conftest import read_sorted

TXRV = "txrv-densenet121-res224-all"
NODULES = "monai-lung-nodule-ct-detection"
WHOLEBODY = "monai-wholebody-ct-segmentation"


def published_like_txrv(path: Path) -> Path:
    """A file in the exact published TorchXRayVision format: a pickled whole DenseNet, no marker."""
    torch.manual_seed(1)
    write_legacy_pickled_module(build_network(TXRV), path, _txrv_class_path)
    return path


def pin_md5(models_dir: Path, name: str, path: Path) -> None:
    """Make the test manifest publish this file's md5, as the MONAI bundles publish theirs."""
    manifest = models_dir / name / "configs" / "metadata.json"
    data = json.loads(manifest.read_text())
    data["files"][0]["md5"] = file_hashes(path)[1]
    manifest.write_text(json.dumps(data))


def cropped_ct(tmp_path: Path, size: int = 64, slices: int = 8) -> list[Path]:
    paths = []
    for k, ds in enumerate(read_sorted()[6 : 6 + slices]):
        stored = ds.pixel_array[200 : 200 + size, 200 : 200 + size]
        ipp = [float(v) for v in ds.ImagePositionPatient]
        dr, dc = (float(v) for v in ds.PixelSpacing)
        ds.ImagePositionPatient = [ipp[0] + 200 * dc, ipp[1] + 200 * dr, ipp[2]]
        ds.PixelData = stored.astype("uint16").tobytes()
        ds.Rows = ds.Columns = size
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = tmp_path / f"crop{k}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def test_nothing_installed_means_not_installed_with_what_to_do(models_dir):
    statuses = model_statuses(models_dir)
    assert [s.installed for s in statuses] == [False, False, False]
    assert all("dicom-node models pull" in s.reason for s in statuses)
    for name in PIPELINE_NAMES:
        with pytest.raises(PipelineNotInstalledError, match="not installed"):
            get_pipeline(name, models_dir)


def test_published_txrv_format_is_converted_loaded_and_runs(models_dir, tmp_path):
    source = published_like_txrv(tmp_path / "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121.pt")
    with pytest.raises(UnrecognisedWeightsError, match="matches no published hash"):
        import_weights(source, models_dir)  # no published hash exists, so recognition needs --model
    record = import_weights(source, models_dir, model=TXRV)
    assert (record.provenance, record.version) == ("published-unpinned", "txrv-v1-all")
    # The installed file loads without unpickling code and equals the pickled model's tensors.
    state = torch.load(weights_path(models_dir, TXRV), weights_only=True)
    torch.manual_seed(1)
    assert all(torch.equal(state[k], v) for k, v in build_network(TXRV).state_dict().items())
    result = get_pipeline("cxr-classification", models_dir).run([CXR])
    assert isinstance(result, ClassificationResult) and len(result.findings) == 18
    assert result.model.version == "txrv-v1-all" and result.model.weights_sha256 == record.sha256


def test_monai_state_dict_recognised_by_published_md5_without_naming_the_model(models_dir, tmp_path):
    path = tmp_path / "model_wholebody_ct_segmentation.pt"
    torch.save(build_network(WHOLEBODY).state_dict(), path)
    pin_md5(models_dir, WHOLEBODY, path)
    record = import_weights(path, models_dir)
    assert (record.model, record.provenance, record.version) == (WHOLEBODY, "published", "0.2.5")


def test_changed_weights_are_refused_with_what_to_do(models_dir, tmp_path):
    import_weights(scaffold(TXRV, tmp_path / "txrv.pt"), models_dir)
    with weights_path(models_dir, TXRV).open("ab") as f:
        f.write(b"\0")
    with pytest.raises(ChecksumMismatchError, match="import the original file again"):
        verify_model(models_dir, TXRV)
    (status, *_) = model_statuses(models_dir)
    assert not status.installed and "changed after import" in status.reason
    with pytest.raises(PipelineNotInstalledError, match="changed after import"):
        get_pipeline("cxr-classification", models_dir)


def test_wrong_architecture_is_refused_with_what_to_do(models_dir, tmp_path):
    state = build_network(TXRV).state_dict()
    state["classifier.weight"] = torch.zeros(14, 1024)
    state["classifier.bias"] = torch.zeros(14)
    torch.save(state, tmp_path / "fourteen.pt")
    with pytest.raises(ArchitectureMismatchError, match=r"classifier.weight \(14, 1024\).*scaffold"):
        import_weights(tmp_path / "fourteen.pt", models_dir, model=TXRV, site=True)
    del state["classifier.bias"]
    with pytest.raises(UnrecognisedWeightsError, match="fits none of the known architectures"):
        import_weights(tmp_path / "fourteen.pt", models_dir)


def test_site_weights_are_named_by_their_sha256(models_dir, tmp_path):
    path = tmp_path / "finetuned.pt"
    torch.save(build_network(TXRV).state_dict(), path)
    record = import_weights(path, models_dir, model=TXRV, site=True)
    assert record.version == f"site-{file_hashes(path)[0][:8]}"
    assert load_model(models_dir, TXRV).record.version == record.version


@pytest.mark.slow
def test_nodule_detector_checkpoint_loads_and_runs_on_a_cropped_ct(models_dir, tmp_path):
    record = import_weights(scaffold(NODULES, tmp_path / "nodules.pt"), models_dir)
    assert record.version.startswith("scaffold-")  # untrained: plumbing only, and labelled so
    result = get_pipeline("ct-lung-nodules", models_dir).run(cropped_ct(tmp_path))
    assert isinstance(result, NoduleDetectionResult)
    assert result.model.version == record.version and len(result.source_images) == 8


@pytest.mark.slow
def test_wholebody_checkpoint_loads_and_runs_on_a_cropped_ct(models_dir, tmp_path):
    record = import_weights(scaffold(WHOLEBODY, tmp_path / "wholebody.pt"), models_dir)
    result = get_pipeline("ct-vertebrae", models_dir).run(cropped_ct(tmp_path, size=48, slices=6))
    assert isinstance(result, SegmentationResult)
    assert result.label_map.shape == (6, 48, 48) and result.model.version == record.version
    assert pydicom.dcmread(cropped_ct(tmp_path)[0]).Rows == 64
