"""Pipelines by name for the worker: registered factories first, then ``pipelines.registry``.

The real pipelines (``pipelines.registry.get_pipeline``) are imported only when a job asks for one, so
the node's processes that never analyse (``serve``, the CLI) never import torch. Modules named in
``[jobs] plugins`` may register more (tests add a fixed-cost pipeline and a minimal writer this way).

A writer gets the findings, the source data sets, the destination profile's name and a
``ResultContext``: what the results' identity derives from (``reports.uids.ResultBasis``), the SRs
each profile's new SR replaces, and the objects already built for this job's other profiles, so that an
object two profiles share is built once.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset

from dicom_node.errors import ConfigError, DicomNodeError
from pipelines.base import Pipeline

if TYPE_CHECKING:
    from dicom_node.reports.uids import DocumentReference, ResultBasis

__all__ = ["Pipeline", "PipelineRegistry", "PipelineUnavailableError", "ResultContext", "ResultWriter"]

UNTRAINED_HINT = "set [analysis] allow_untrained = true to run it for tests"


class PipelineUnavailableError(DicomNodeError):
    """No pipeline of that name exists here, or its model is not installed or untrained; skipped."""


@dataclass
class ResultContext:
    """What one job's writer needs besides the findings: identity basis, predecessors, shared objects."""

    pipeline: str
    basis: ResultBasis
    predecessors: Mapping[str, Sequence[DocumentReference]] = field(default_factory=dict)
    built: dict[Hashable, list[Dataset]] = field(default_factory=dict)


ResultWriter = Callable[[Any, Sequence[Dataset], str, ResultContext], list[Dataset]]
"""findings, source datasets, destination profile name, context → result datasets (SR, SEG, …)."""


def write_with_reports(
    findings: Any, sources: Sequence[Dataset], profile: str, context: ResultContext
) -> list[Dataset]:
    """The real writers: ``dicom_node.reports.write_results`` with the named ``ReportProfile``.

    The settings check destination profiles at load; a name that still is not one (a result row
    written by another version) is an error, never a silent fallback to the default profile.
    """
    from dicom_node import reports
    from dicom_node.reports.profile import PROFILES, resolve_profile

    try:
        chosen = resolve_profile(profile)
    except KeyError:
        raise ConfigError(f"unknown report profile {profile!r}; one of {', '.join(PROFILES)}") from None
    write_results: Callable[..., list[Dataset]] = reports.write_results
    return list(
        write_results(
            findings,
            sources,
            chosen,
            pipeline=context.pipeline,
            basis=context.basis,
            predecessors=tuple(context.predecessors.get(profile, ())),
            shared=context.built,
        )
    )


@dataclass
class PipelineRegistry:
    """Pipelines by name: registered factories first, then ``pipelines.registry.get_pipeline``."""

    factories: dict[str, Callable[[], Pipeline]] = field(default_factory=dict)
    writers: dict[str, ResultWriter] = field(default_factory=dict)

    def register(
        self, name: str, factory: Callable[[], Pipeline], writer: ResultWriter | None = None
    ) -> None:
        self.factories[name] = factory
        if writer is not None:
            self.writers[name] = writer

    def load_plugins(self, modules: Sequence[str]) -> None:
        """Import each module and call its ``register_pipelines(registry)``."""
        for name in modules:
            importlib.import_module(name).register_pipelines(self)

    def pipeline(
        self, name: str, models_dir: Path, *, allow_untrained: bool = False, mode: str = "exact"
    ) -> Pipeline:
        """The named pipeline; ``PipelineUnavailableError`` (the job is skipped) with the reason."""
        if name in self.factories:
            return self.factories[name]()
        try:
            from pipelines.errors import PipelineNotInstalledError, UntrainedModelError
            from pipelines.registry import get_pipeline
        except ImportError as error:
            raise PipelineUnavailableError(f"pipeline {name!r} is not available here: {error}") from None
        try:
            pipeline: Pipeline = get_pipeline(name, models_dir, allow_untrained=allow_untrained, mode=mode)
        except UntrainedModelError as error:
            raise PipelineUnavailableError(f"{error}; {UNTRAINED_HINT}") from None
        except PipelineNotInstalledError as error:
            raise PipelineUnavailableError(str(error)) from None
        except ValueError as error:
            raise PipelineUnavailableError(f"no pipeline named {name!r}: {error}") from None
        return pipeline

    def writer(self, name: str) -> ResultWriter:
        return self.writers.get(name, write_with_reports)
