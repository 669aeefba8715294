"""Verified loading of installed weights, one warm network per model and device per process.

An installed model is two files under ``<models_dir>/<name>/models/``: ``model.pt``, a plain state
dict that ``torch.load(weights_only=True)`` reads (no code is unpickled), and ``model.pt.json``, the
import record: the sha256 of ``model.pt``, the version results are labelled with, and where the
weights came from. ``verify_model`` checks the record, the sha256 and the architecture (strict keys and
shapes); ``load_model`` does that once and then keeps the network warm.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.architectures import build_network, check_architecture
from models.errors import ChecksumMismatchError, ModelNotInstalledError
from models.manifest import WEIGHTS_FILE, ModelManifest, load_manifest

RECORD_SUFFIX = ".json"


@dataclass(frozen=True)
class WeightsRecord:
    """What ``models import`` wrote next to ``model.pt``.

    ``provenance`` is ``published`` (hash matches the manifest), ``published-unpinned`` (the model
    publishes no hash; accepted by explicit ``--model``), ``site`` (``--site``: version ``site-<sha8>``)
    or ``scaffold`` (untrained, written by ``models scaffold``: version ``scaffold-<sha8>``, plumbing and
    benchmarks only).
    """

    model: str
    version: str
    provenance: str
    sha256: str
    source_name: str
    source_sha256: str
    source_md5: str
    imported_at: str

    @property
    def untrained(self) -> bool:
        return self.provenance == "scaffold"


@dataclass
class InstalledModel:
    """A verified, loaded network in eval mode with what results must say about it."""

    name: str
    record: WeightsRecord
    manifest: ModelManifest
    network: nn.Module
    device: torch.device


def weights_path(models_dir: Path, name: str) -> Path:
    return models_dir / name / WEIGHTS_FILE


def record_path(models_dir: Path, name: str) -> Path:
    path = weights_path(models_dir, name)
    return path.with_name(path.name + RECORD_SUFFIX)


def file_hashes(path: Path) -> tuple[str, str]:
    """(sha256, md5) of a file, read in chunks: one pass for both (``hashlib.file_digest`` takes one)."""
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
            md5.update(chunk)
    return sha.hexdigest(), md5.hexdigest()


def write_record(models_dir: Path, record: WeightsRecord) -> None:
    path = record_path(models_dir, record.model)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(record), indent=2) + "\n")
    tmp.replace(path)


def read_record(models_dir: Path, name: str) -> WeightsRecord:
    weights = weights_path(models_dir, name)
    if not weights.is_file():
        raise ModelNotInstalledError(
            f"no weights at {weights}: run `dicom-node models pull {name}` where there is internet, or "
            f"`dicom-node models import FILE` with the published file"
        )
    path = record_path(models_dir, name)
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return WeightsRecord(**data)
    except FileNotFoundError:
        raise ModelNotInstalledError(
            f"{weights} was not installed by `dicom-node models import` (no {path.name}): import the file "
            "so that its checksum and architecture are verified"
        ) from None
    except (ValueError, TypeError) as exc:
        raise ModelNotInstalledError(f"{path} is unreadable ({exc}): import the weights again") from exc


def read_state_dict(path: Path) -> OrderedDict[str, torch.Tensor]:
    """A state dict from a weights_only-loadable file (a bare state dict or MONAI's ``{"model": ...}``)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise ModelNotInstalledError(
            f"{path} cannot be read as a plain state dict ({type(exc).__name__}): a pickled model must go "
            "through `dicom-node models import`, which converts it"
        ) from exc
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelNotInstalledError(
            f"{path} does not hold a state dict of tensors: import the weights again"
        )
    result = obj if isinstance(obj, OrderedDict) else OrderedDict(obj)
    return result


def verify_model(models_dir: Path, name: str) -> tuple[WeightsRecord, OrderedDict[str, torch.Tensor]]:
    """Check record, sha256 and architecture; returns the record and the state dict."""
    record = read_record(models_dir, name)
    weights = weights_path(models_dir, name)
    sha256, _ = file_hashes(weights)
    if sha256 != record.sha256:
        raise ChecksumMismatchError(
            f"{weights} has sha256 {sha256[:12]}… but was imported as {record.sha256[:12]}…: "
            "the file changed after import; import the original file again "
            f"(`dicom-node models import FILE --model {name}`)"
        )
    state_dict = read_state_dict(weights)
    check_architecture(name, state_dict, str(weights))
    return record, state_dict


_WARM: dict[tuple[str, str, str], InstalledModel] = {}
_WARM_LOCK = threading.Lock()


def load_model(models_dir: Path, name: str, device: torch.device | str = "cpu") -> InstalledModel:
    """The verified network in eval mode on ``device``; loaded once per process and kept warm.

    The cache is keyed by the weights' recorded sha256, so a re-import is picked up by the next call.
    """
    device = torch.device(device)
    record = read_record(models_dir, name)
    key = (str(models_dir.resolve()), name, str(device))
    with _WARM_LOCK:
        warm = _WARM.get(key)
        if warm is not None and warm.record.sha256 == record.sha256:
            return warm
        record, state_dict = verify_model(models_dir, name)
        network = build_network(name)
        network.load_state_dict(state_dict, strict=True)
        network.eval().to(device)
        installed = InstalledModel(name, record, load_manifest(models_dir, name), network, device)
        _WARM[key] = installed
        return installed


def forget_warm_models() -> None:
    """Drop every warm network (tests; a worker never needs this)."""
    with _WARM_LOCK:
        _WARM.clear()
