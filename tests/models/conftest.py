"""A private copy of the repository's model folders (manifests and cards) to install weights into."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from models.loader import forget_warm_models

REPO_MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture()
def models_dir(tmp_path) -> Path:
    target = tmp_path / "models"
    shutil.copytree(
        REPO_MODELS, target, ignore=shutil.ignore_patterns("*.py", "__pycache__", "models", "downloads")
    )
    forget_warm_models()
    yield target
    forget_warm_models()
