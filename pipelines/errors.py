"""Exceptions raised by the analysis pipelines.

    PipelineError
    ├── PipelineInputError        the series or image cannot be analysed as it is (lateral view,
    │                             gantry tilt, missing slice, wrong modality); permanent
    └── PipelineNotInstalledError the pipeline's model weights are missing or do not verify; the job
                                  is skipped with this reason and analysed once weights are installed

``pipelines/`` never imports ``dicom_node``; the node maps these at its own boundary (a job whose input
is refused ends ``failed`` with the message, a job whose model is missing ends ``skipped``).
"""

from __future__ import annotations


class PipelineError(Exception):
    """Root of the errors the pipelines raise on purpose."""


class PipelineInputError(PipelineError):
    """The input cannot be analysed; the message says why in words a technologist understands."""


class PipelineNotInstalledError(PipelineError):
    """The model a pipeline needs is not installed or does not verify; the message says what to do."""

    def __init__(self, pipeline: str, reason: str) -> None:
        super().__init__(f"pipeline {pipeline!r} is not installed: {reason}")
        self.pipeline = pipeline
        self.reason = reason
