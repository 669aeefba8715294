"""Exceptions raised by the analysis pipelines.

    PipelineError
    ├── PipelineInputError        the series or image cannot be analysed as it is (lateral view,
    │                             gantry tilt, missing slice, wrong modality); permanent
    ├── PipelineNotInstalledError the pipeline's model weights are missing or do not verify; the job
    │                             is skipped with this reason and analysed once weights are installed
    └── UntrainedModelError       the installed weights are an untrained scaffold and the caller did
                                  not allow untrained weights; the job is skipped with this reason

``pipelines/`` never imports ``dicom_node``; the node maps these at its own boundary (a job whose input
is refused ends ``failed`` with the message, a job whose model is missing or untrained ends ``skipped``).
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


class UntrainedModelError(PipelineError):
    """The installed weights are an untrained scaffold (``models scaffold``) and were not allowed."""

    def __init__(self, pipeline: str, model: str, version: str) -> None:
        super().__init__(f"model {model} has untrained (scaffold) weights ({version})")
        self.pipeline = pipeline
        self.model = model
        self.version = version
