"""An empty models directory just works: manifests and model cards come with the package.

Real ``dicom-node models`` processes, started outside the repository (so that no ``./models`` folder is
near), with ``DICOM_NODE_MODELS_DIR`` naming a folder that holds nothing at first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from models.manifest import MODEL_NAMES, model_card_path, packaged_manifest_path

CLI = [sys.executable, "-c", "from dicom_node.cli.app import main; main()"]
TXRV = "txrv-densenet121-res224-all"


def _models(cwd: Path, models_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DICOM_NODE_MODELS_DIR": str(models_dir)}
    return subprocess.run(
        [*CLI, "models", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_manifests_and_model_cards_ship_with_the_package():
    for name in MODEL_NAMES:
        assert json.loads(packaged_manifest_path(name).read_text())["name"] == name
        assert model_card_path(name).read_text().strip()


def test_import_and_list_into_an_empty_models_dir(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    work = tmp_path / "elsewhere"
    work.mkdir()

    listed = _models(work, empty, "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("not installed") == 3 and "metadata.json" not in listed.stdout

    checkpoint = tmp_path / "txrv.pt"
    made = _models(work, empty, "scaffold", TXRV, str(checkpoint))
    assert made.returncode == 0, made.stderr
    imported = _models(work, empty, "import", str(checkpoint))
    assert imported.returncode == 0, imported.stdout + imported.stderr
    assert f"{TXRV}: installed scaffold-" in imported.stdout and "UNTRAINED" in imported.stdout

    listed = _models(work, empty, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    statuses = {s["name"]: s for s in json.loads(listed.stdout)}
    assert statuses[TXRV]["installed"] and statuses[TXRV]["provenance"] == "scaffold"
    assert statuses[TXRV]["pipeline"] == "cxr-classification" and statuses[TXRV]["manifest"] is None
    assert [s["installed"] for s in statuses.values()] == [True, False, False]
    # The folder holds the weights and their import record, nothing else.
    held = sorted(str(p.relative_to(empty)) for p in empty.rglob("*") if p.is_file())
    assert held == [f"{TXRV}/models/model.pt", f"{TXRV}/models/model.pt.json"]
    verified = _models(work, empty, "verify")
    assert verified.returncode == 1 and f"{TXRV}: ok scaffold-" in verified.stdout
