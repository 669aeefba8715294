"""Model manifests: ``models/<name>/configs/metadata.json`` read into typed values.

A manifest names the model, its version, the published weights file(s) with URL and hashes, the
license, the input specification, labels and thresholds. The pipelines read their parameters (spacing,
intensity window, sliding-window settings, score and NMS thresholds, label maps) from here, so the
manifest is the one place that says how the published model is used.

Manifests and model cards (``models/<name>/docs/README.md``) ship with the package. The models
directory (``$DICOM_NODE_MODELS_DIR``) holds what is installed there: weights and their import records,
so an empty folder is a valid one. A manifest placed there (``<models_dir>/<name>/configs/metadata.json``)
is used instead of the packaged one: that is how a site pins a hash the model does not publish.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.errors import ModelNotInstalledError

MODEL_NAMES = (
    "txrv-densenet121-res224-all",
    "monai-lung-nodule-ct-detection",
    "monai-wholebody-ct-segmentation",
)
MODELS_DIR_ENV = "DICOM_NODE_MODELS_DIR"
WEIGHTS_FILE = "models/model.pt"
MANIFEST_FILE = "configs/metadata.json"
MODEL_CARD_FILE = "docs/README.md"
PACKAGE_DIR = Path(__file__).resolve().parent
"""Where the packaged manifests and model cards are (``models/<name>/...`` of the installed package)."""


def default_models_dir() -> Path:
    """``$DICOM_NODE_MODELS_DIR``, else ``./models``: where weights are installed."""
    return Path(os.environ.get(MODELS_DIR_ENV, "models"))


@dataclass(frozen=True)
class PublishedFile:
    """One published weights file: where it comes from and how to recognise it."""

    path: str
    url: str
    format: str  # "pickled-module" or "state-dict"
    sha256: str | None
    md5: str | None
    note: str = ""


@dataclass(frozen=True)
class ModelManifest:
    """The parsed ``configs/metadata.json`` of one model."""

    name: str
    version: str
    pipeline: str
    license: str
    files: tuple[PublishedFile, ...]
    data: dict[str, Any] = field(repr=False)

    @property
    def weights(self) -> PublishedFile:
        """The file the pipeline loads (``models/model.pt``)."""
        return self.files[0]

    def section(self, key: str) -> dict[str, Any]:
        value = self.data.get(key)
        if not isinstance(value, dict):
            raise KeyError(f"manifest of {self.name} has no {key!r} section")
        return value


def site_manifest_path(models_dir: Path, name: str) -> Path:
    """Where a site's own copy of a manifest goes (it then replaces the packaged one)."""
    return models_dir / name / MANIFEST_FILE


def packaged_manifest_path(name: str) -> Path:
    return PACKAGE_DIR / name / MANIFEST_FILE


def model_card_path(name: str) -> Path:
    """The model card shipped with the package."""
    return PACKAGE_DIR / name / MODEL_CARD_FILE


def manifest_path(models_dir: Path, name: str) -> Path:
    """The manifest in force: the site's copy in ``models_dir`` if there is one, else the packaged one."""
    site = site_manifest_path(models_dir, name)
    return site if site.is_file() else packaged_manifest_path(name)


def load_manifest(models_dir: Path, name: str) -> ModelManifest:
    """Read and check one model's manifest."""
    if name not in MODEL_NAMES:
        raise ValueError(f'Argument "name" must be one of {", ".join(MODEL_NAMES)}, got {name!r}.')
    path = manifest_path(models_dir, name)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ModelNotInstalledError(
            f"{path} is missing: the installed package lacks the manifest of {name}; reinstall dicom-node"
        ) from exc
    files = tuple(
        PublishedFile(
            path=f["path"],
            url=f["url"],
            format=f["format"],
            sha256=f.get("sha256"),
            md5=f.get("md5"),
            note=f.get("note", ""),
        )
        for f in data["files"]
    )
    if data["name"] != name or not files:
        raise ValueError(f"{path}: manifest names {data['name']!r} or lists no files")
    return ModelManifest(
        name=name,
        version=str(data["version"]),
        pipeline=str(data["pipeline"]),
        license=str(data["license"]),
        files=files,
        data=data,
    )
