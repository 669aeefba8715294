"""Exceptions about model weights; each message ends with what to do.

ModelError
├── ModelNotInstalledError     no weights (or no import record) under the models directory
├── ChecksumMismatchError      the weights changed since import, or a download is not the published file
├── ArchitectureMismatchError  the state dict's keys or shapes are not the network's
├── UnrecognisedWeightsError   ``import`` cannot tell which model a file is, or that it is published
└── DownloadError              ``pull`` could not fetch a file
"""

from __future__ import annotations


class ModelError(Exception):
    """Root of the model errors."""


class ModelNotInstalledError(ModelError):
    """The model's weights are not installed."""


class ChecksumMismatchError(ModelError):
    """A file's hash is not the one recorded or published."""


class ArchitectureMismatchError(ModelError):
    """A state dict does not fit the network (missing, unexpected or mis-shaped tensors)."""


class UnrecognisedWeightsError(ModelError):
    """A file to import matches no published hash and was not declared as site weights."""


class DownloadError(ModelError):
    """A download failed or was refused."""
