"""What every pipeline is: ``run(paths) -> Findings``, made of timed stages.

A pipeline is an explicit composition of plain typed calls — ``load`` (DICOM → pixels and geometry),
``preprocess`` (the model's own transforms), ``infer`` (the network, an injectable stage so tests can
put an oracle in its place), ``postprocess`` (back to patient space and the result types). ``run``
chains them; ``run_timed`` also reports seconds per stage for benchmarks and metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Protocol, TypeVar

from pipelines.findings import Findings

STAGES = ("load", "preprocess", "inference", "postprocess")


class AnalysisMode(StrEnum):
    """``exact``: the published bundle's inference, voxel for voxel. ``fast``: a documented shortcut for
    sites without a GPU (``ct-lung-nodules``: only the lungs' box; ``ct-vertebrae``: sliding windows
    without overlap); its measured difference from ``exact`` is in bench/README.md."""

    EXACT = "exact"
    FAST = "fast"


T = TypeVar("T")


class Pipeline(Protocol):
    """A pure analysis: DICOM files in, typed findings out; no network, no database."""

    name: str

    def run(self, paths: Sequence[str | Path]) -> Findings: ...

    def run_timed(self, paths: Sequence[str | Path]) -> tuple[Findings, dict[str, float]]: ...


class StageTimer:
    """Collects wall-clock seconds per stage name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, stage: str, fn: Callable[[], T]) -> T:
        start = time.perf_counter()
        try:
            return fn()
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start
