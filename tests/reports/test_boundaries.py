"""dicom_node/reports imports only the result types of pipelines/findings.py (STYLE.md §1)."""

from __future__ import annotations

import ast
from pathlib import Path

REPORTS = Path(__file__).resolve().parents[2] / "dicom_node" / "reports"
ALLOWED_FIRST_PARTY = {"pipelines.findings", "dicom_node.errors"}


def test_reports_import_nothing_of_ours_but_findings() -> None:
    offending = []
    for path in REPORTS.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in ("torch", "monai", "models") or (
                    top in ("dicom_node", "pipelines") and name not in ALLOWED_FIRST_PARTY
                ):
                    offending.append(f"{path.name}: {name}")
    assert not offending, offending
