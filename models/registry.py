"""Which models are installed: the status ``dicom-node status`` and ``models list`` show."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from models.errors import ModelError
from models.loader import verify_model
from models.manifest import MODEL_NAMES, load_manifest, manifest_path, packaged_manifest_path


@dataclass(frozen=True)
class ModelStatus:
    """One model: installed or not, and why not (a sentence that says what to do)."""

    name: str
    pipeline: str
    installed: bool
    version: str | None
    provenance: str | None
    sha256: str | None
    reason: str
    manifest: str | None = None
    """The manifest in force when it is a site's copy in the models directory (``None``: the packaged one)."""

    @property
    def untrained(self) -> bool:
        return self.provenance == "scaffold"


def model_status(models_dir: Path, name: str) -> ModelStatus:
    """Verify one model's weights (record, sha256, architecture) and say what was found."""
    in_force = manifest_path(models_dir, name)
    site = None if in_force == packaged_manifest_path(name) else str(in_force)
    try:
        manifest = load_manifest(models_dir, name)
    except ModelError as exc:
        return ModelStatus(name, "", False, None, None, None, str(exc), site)
    try:
        record, _ = verify_model(models_dir, name)
    except ModelError as exc:
        return ModelStatus(name, manifest.pipeline, False, None, None, None, str(exc), site)
    reason = {
        "published": "published weights, checksum verified",
        "published-unpinned": "published weights (no published hash to compare; sha256 recorded at import)",
        "site": "site-trained weights of the published architecture",
        "scaffold": "UNTRAINED scaffold weights: for plumbing tests and benchmarks only",
    }.get(record.provenance, record.provenance)
    return ModelStatus(
        name, manifest.pipeline, True, record.version, record.provenance, record.sha256, reason, site
    )


def model_statuses(models_dir: Path) -> list[ModelStatus]:
    """The status of every known model, in the order of ``MODEL_NAMES``."""
    return [model_status(models_dir, name) for name in MODEL_NAMES]
