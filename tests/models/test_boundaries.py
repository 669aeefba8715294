"""``pipelines/`` and ``models/`` never import ``dicom_node`` (data flows one way)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("package", ["pipelines", "models"])
def test_package_does_not_import_the_node(package):
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] == "dicom_node"]
    assert offenders == []


@pytest.mark.parametrize("package", ["pipelines", "models"])
def test_package_does_not_import_torchvision_or_torchxrayvision(package):
    for path in sorted((ROOT / package).rglob("*.py")):
        text = path.read_text()
        assert "import torchvision" not in text and "import torchxrayvision" not in text, path
