"""A ``fast`` result never passes for an exact one: its algorithm version says ``+fast``.

The mode reaches the pipelines from ``[analysis] mode`` (dicom_node/jobs/analysis.py); the version is what
every SR and SEG names as the algorithm and part of each result's identity (jobs/identity.py), so exact
and fast results of one series are different objects with different UIDs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from models.installer import import_weights, scaffold
from pipelines.registry import PIPELINE_MODELS, get_pipeline


@pytest.mark.parametrize("name", ["ct-lung-nodules", "ct-vertebrae", "cxr-classification"])
def test_fast_mode_is_in_the_algorithm_version(tmp_path: Path, name: str) -> None:
    model = PIPELINE_MODELS[name]
    models_dir = tmp_path / "models"
    import_weights(scaffold(model, tmp_path / "weights.pt"), models_dir, model=model)
    exact = get_pipeline(name, models_dir, allow_untrained=True, mode="exact")
    fast = get_pipeline(name, models_dir, allow_untrained=True, mode="fast")
    assert "+fast" not in exact.model.version  # type: ignore[attr-defined]
    if name == "cxr-classification":  # one computation in both modes
        assert fast.model == exact.model  # type: ignore[attr-defined]
    else:
        assert fast.model.version == exact.model.version + "+fast"  # type: ignore[attr-defined]
