"""Module boundaries (STYLE.md §1): data flows one way, and the edge never imports torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _imports(package: str) -> dict[Path, set[str]]:
    found: dict[Path, set[str]] = {}
    for path in (REPO / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[path] = names
    return found


def test_pipelines_and_models_never_import_the_node():
    for package in ("pipelines", "models"):
        for path, names in _imports(package).items():
            offending = sorted(n for n in names if n == "dicom_node" or n.startswith("dicom_node."))
            assert not offending, f"{path.relative_to(REPO)} imports {offending}"


def test_the_listener_never_imports_torch():
    code = (
        "import sys, dicom_node.node, dicom_node.edge.scp, dicom_node.cli;"
        "bad = sorted(m for m in ('torch', 'monai', 'highdicom') if m in sys.modules);"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert result.returncode == 0, (
        f"importing the edge pulled in {result.stdout.strip()} {result.stderr[-2000:]}"
    )
