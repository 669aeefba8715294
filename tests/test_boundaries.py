"""Module boundaries (docs/architecture.md): the import-linter contracts of pyproject.toml hold, they
catch a broken layer, and importing the listener loads no torch at run time (which a static import graph
cannot tell apart from an import inside a function)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        capture_output=True, text=True, cwd=root, env=env, check=False, timeout=300,
    )  # fmt: skip


def test_the_contracts_hold():
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_a_broken_layer_fails_the_contracts(tmp_path):
    for package in ("dicom_node", "pipelines", "models"):
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    store = tmp_path / "dicom_node" / "storage" / "store.py"
    store.write_text(store.read_text() + "\nimport dicom_node.cli.app  # noqa: E402\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert "dicom_node.storage is not allowed to import dicom_node.cli" in result.stdout


def test_the_listener_never_imports_torch():
    code = (
        "import sys, dicom_node.node, dicom_node.edge.scp, dicom_node.cli.app;"
        "bad = sorted(m for m in ('torch', 'monai', 'highdicom') if m in sys.modules);"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert result.returncode == 0, (
        f"importing the edge pulled in {result.stdout.strip()} {result.stderr[-2000:]}"
    )
