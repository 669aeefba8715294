"""Our MONAI model manifests agree with the published bundles they describe.

The pipelines take spacing, intensity window, sliding-window settings, box-selector thresholds and label
maps from ``models/<name>/configs/metadata.json``; a typo there would silently change the analysis. This
compares each manifest with the published bundle's ``configs/inference.json``, ``configs/metadata.json``
and ``large_files.yml``, read from ``$DICOM_NODE_REFERENCE/monai-bundles/<bundle>/`` (not ours to copy;
skipped without it). References such as ``@pixdim`` are resolved by MONAI's own ``ConfigParser``.
The TorchXRayVision manifest has no bundle to compare with and is not covered here.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import pytest
from monai.bundle import ConfigParser

from models.manifest import MODEL_NAMES, load_manifest
from tests.conftest import REPO

MODELS = REPO / "models"
MODEL_ZOO = "Project-MONAI/model-zoo"
MONAI_MODELS = [
    name for name in MODEL_NAMES if load_manifest(MODELS, name).data["source"]["project"] == MODEL_ZOO
]


def _bundle(bundle_reference: Path, name: str) -> tuple[dict[str, Any], Path]:
    manifest = load_manifest(MODELS, name).data
    folder = bundle_reference / manifest["source"]["bundle"]
    if not (folder / "configs" / "inference.json").is_file():
        pytest.fail(f"the reference has no bundle {manifest['source']['bundle']!r} (looked in {folder})")
    return manifest, folder


def _parser(folder: Path) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.json"))
    return parser


def _transform(parser: ConfigParser, target: str) -> tuple[str, dict[str, Any]]:
    """The id and raw config of the preprocessing transform ``target`` (the last one, if repeated)."""
    found = [
        (f"preprocessing#transforms#{i}", t)
        for i, t in enumerate(parser["preprocessing"]["transforms"])
        if t["_target_"] == target
    ]
    assert found, f"inference.json has no {target} in its preprocessing"
    return found[-1]


def _detector_call(parser: ConfigParser, method: str) -> dict[str, Any]:
    """Keyword arguments of ``$@detector.<method>(...)`` in ``detector_ops``, references resolved."""
    for op in parser["detector_ops"]:
        if f".{method}(" not in op:
            continue
        source = re.sub(r"@(\w+)", r"__ref__\1", op.removeprefix("$@detector."))
        call = ast.parse(source, mode="eval").body
        assert isinstance(call, ast.Call)
        values = {}
        for keyword in call.keywords:
            if isinstance(keyword.value, ast.Name) and keyword.value.id.startswith("__ref__"):
                values[keyword.arg] = parser.get_parsed_content(keyword.value.id.removeprefix("__ref__"))
            else:
                values[keyword.arg] = ast.literal_eval(keyword.value)
        return values
    raise AssertionError(f"detector_ops has no {method} call")


def _large_files(folder: Path) -> dict[str, dict[str, str]]:
    """``large_files.yml`` entries by path (a flat list of quoted scalars, so no YAML library is needed)."""
    text = (folder / "large_files.yml").read_text()
    entries = {}
    for block in re.split(r"^- ", text, flags=re.MULTILINE)[1:]:
        fields = dict(re.findall(r'^\s*(\w+):\s*"?([^"\n]*?)"?\s*$', block, flags=re.MULTILINE))
        entries[fields["path"]] = fields
    return entries


@pytest.mark.parametrize("name", MONAI_MODELS)
def test_version_and_weights_file_are_the_published_ones(bundle_reference: Path, name: str) -> None:
    manifest, folder = _bundle(bundle_reference, name)
    assert manifest["version"] == json.loads((folder / "configs" / "metadata.json").read_text())["version"]
    published = _large_files(folder)
    for file in manifest["files"]:
        entry = published.get(file["path"])
        assert entry is not None, f"{file['path']} is not in the bundle's large_files.yml"
        assert entry["url"] == file["url"]
        assert entry["hash_type"] == "md5" and entry["hash_val"] == file["md5"]


@pytest.mark.parametrize("name", MONAI_MODELS)
def test_input_grid_is_the_bundles(bundle_reference: Path, name: str) -> None:
    manifest, folder = _bundle(bundle_reference, name)
    parser = _parser(folder)
    _, orientation = _transform(parser, "Orientationd")
    assert manifest["input"]["orientation"] == orientation["axcodes"]
    spacing_id, spacing = _transform(parser, "Spacingd")
    assert manifest["input"]["spacing_mm"] == parser.get_parsed_content(f"{spacing_id}#pixdim")
    # Spacingd's default interpolation is bilinear; the whole-body bundle names it.
    assert manifest["input"]["resample_mode"] == spacing.get("mode", "bilinear")


def test_lung_nodule_detector_settings_are_the_bundles(bundle_reference: Path) -> None:
    manifest, folder = _bundle(bundle_reference, "monai-lung-nodule-ct-detection")
    parser = _parser(folder)
    _, window = _transform(parser, "ScaleIntensityRanged")
    assert manifest["input"]["intensity_window"] == {
        k: window[k] for k in ("a_min", "a_max", "b_min", "b_max", "clip")
    }

    inference = manifest["inference"]
    anchors = parser["anchor_generator"]
    assert inference["anchor_feature_map_scales"] == anchors["feature_map_scales"]
    assert inference["base_anchor_shapes"] == anchors["base_anchor_shapes"]
    assert inference["size_divisible"] == parser["size_divisible"]
    assert inference["force_sliding_window"] == parser["force_sliding_window"]
    assert inference["amp"] == parser["amp"]
    window_inferer = _detector_call(parser, "set_sliding_window_inferer")
    assert inference["roi_size"] == window_inferer["roi_size"]
    assert inference["overlap"] == window_inferer["overlap"]
    assert inference["sw_batch_size"] == window_inferer["sw_batch_size"]
    assert inference["sw_mode"] == window_inferer["mode"]

    selector = _detector_call(parser, "set_box_selector_parameters")
    assert {k: manifest["thresholds"][k] for k in selector} == selector
    assert len(manifest["labels"]) == parser["num_classes"]


def test_wholebody_inferer_and_labels_are_the_bundles(bundle_reference: Path) -> None:
    manifest, folder = _bundle(bundle_reference, "monai-wholebody-ct-segmentation")
    parser = _parser(folder)
    inference = manifest["inference"]
    for key in ("roi_size", "sw_batch_size", "overlap", "mode", "padding_mode"):
        assert inference[key] == parser.get_parsed_content(f"inferer#{key}"), key
    assert inference["amp"] == parser.get_parsed_content("evaluator#amp")

    metadata = json.loads((folder / "configs" / "metadata.json").read_text())
    channels = metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert manifest["labels"] == channels
    assert len(manifest["labels"]) == parser["network_def"]["out_channels"]
    assert set(manifest["kept_labels"].items()) <= set(channels.items())
