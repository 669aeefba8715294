"""Reading a PyTorch file that pickles a whole ``nn.Module``, running none of the file's code.

TorchXRayVision publishes ``densenet121-res224-all`` as ``torch.save(model)``: a pickled module, not a
state dict. Loading it the library's way (``torch.load(weights_only=False)``) runs arbitrary pickle code
and needs the pickled classes importable (torchxrayvision, hence torchvision). This module imports
neither; every class the file names under ``STAND_IN_PACKAGES`` becomes an inert ``StandInModule``
(``models.stand_ins``) and any other global is refused. Per container format:

* zip archive (torch >= 1.6): ``torch.load(path, weights_only=True)`` inside the
  ``torch.serialization.safe_globals`` context, which maps each pickled class name to a stand-in of
  ours for this load only. The names come from ``get_unsafe_globals_in_checkpoint`` (a static read of
  the pickle); a name outside the stand-in packages is refused with our message before loading, and
  torch's weights-only unpickler refuses anything else it meets. The allow-list is process-wide while
  the context lasts; it only ever holds inert stand-ins, so a concurrent load can gain nothing from it.
* legacy stream (torch < 1.6, what the published file almost certainly is): torch's weights-only
  unpickler cannot read a whole module in this format (it refuses the ``("module", …)`` persistent ids
  the legacy writer records); ``models.legacy_pickle`` says exactly why and reads it with a restricted
  unpickler instead.

The state dict is then collected from the stand-in tree exactly as ``nn.Module.state_dict()`` would:
own parameters, persistent buffers, then children, depth first.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from models.legacy_pickle import read_legacy
from models.stand_ins import (
    STAND_IN_PACKAGES,
    PickledModelError,
    StandInModule,
    is_stand_in_name,
    refusal,
    stand_in_class,
)

__all__ = [
    "SCAFFOLD_MARKER",
    "STAND_IN_PACKAGES",
    "PickledModelError",
    "StandInModule",
    "is_scaffold",
    "load_pickled_module",
    "pickled_state_dict",
    "read_pickled_state_dict",
]

ZIP_MAGIC = b"PK\x03\x04"
SCAFFOLD_MARKER = "dicom_node_scaffold"


def _load_legacy(path: Path) -> object:
    with path.open("rb") as stream:
        try:
            return read_legacy(stream, path.stat().st_size)
        except PickledModelError:
            raise
        except Exception as exc:  # truncated or malformed pickle, a stand-in called with arguments…
            raise PickledModelError(f"not a readable PyTorch file: {type(exc).__name__}: {exc}") from exc


def _load_zip(path: Path) -> object:
    try:
        unknown = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except (pickle.UnpicklingError, ValueError, RuntimeError, EOFError) as exc:
        raise PickledModelError(f"not a readable PyTorch archive: {exc}") from exc
    for full_name in unknown:
        if not is_stand_in_name(full_name):
            raise refusal(full_name)
    stand_ins: list[Callable[..., object] | tuple[Callable[..., object], str]] = [
        (stand_in_class(*full_name.rsplit(".", 1)), full_name) for full_name in unknown
    ]
    try:
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message advises weights_only=False "if you trust the file": keep only what it found.
        found = str(exc).split("WeightsUnpickler error:")[-1].split("Check the documentation")[0].strip()
        raise PickledModelError(f"refused by torch's weights-only unpickler: {found}") from None
    except PickledModelError:
        raise
    except Exception as exc:  # a stand-in called with arguments, a malformed tensor, a broken archive…
        raise PickledModelError(f"not a readable pickled model: {type(exc).__name__}: {exc}") from exc


def load_pickled_module(path: str | Path) -> StandInModule:
    """Unpickle a whole-module file into inert stand-ins with real tensors, running none of its code."""
    path = Path(path)
    with path.open("rb") as stream:
        is_zip = stream.read(len(ZIP_MAGIC)) == ZIP_MAGIC
    root = _load_zip(path) if is_zip else _load_legacy(path)
    if not isinstance(root, StandInModule):
        raise PickledModelError(f"the file holds a {type(root).__name__}, not a pickled model")
    return root


def _state_items(module: StandInModule, prefix: str) -> Iterator[tuple[str, object]]:
    state = module.__dict__
    for name, value in (state.get("_parameters") or {}).items():
        if value is not None:
            yield prefix + name, value
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    for name, value in (state.get("_buffers") or {}).items():
        if value is not None and name not in non_persistent:
            yield prefix + name, value
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            if not isinstance(child, StandInModule):
                raise PickledModelError(f"submodule {prefix + name} is not a module")
            yield from _state_items(child, f"{prefix}{name}.")


def pickled_state_dict(module: StandInModule) -> OrderedDict[str, torch.Tensor]:
    """What ``module.state_dict()`` would return had the pickled classes been imported."""
    items: OrderedDict[str, torch.Tensor] = OrderedDict()
    try:
        for key, value in _state_items(module, ""):
            if not isinstance(value, torch.Tensor):
                raise PickledModelError(f"{key} is not a tensor")
            items[key] = value.detach()
    except (AttributeError, TypeError) as exc:  # e.g. ``_parameters`` pickled as something that is no dict
        raise PickledModelError(f"the pickled module tree is malformed: {exc}") from exc
    return items


def read_pickled_state_dict(path: str | Path) -> OrderedDict[str, torch.Tensor]:
    """The ``state_dict()`` of the model pickled in ``path``, read without running any of its code."""
    return pickled_state_dict(load_pickled_module(path))


def is_scaffold(module: StandInModule) -> bool:
    """Whether the pickled model was written by ``scaffold`` (untrained)."""
    return bool(module.__dict__.get(SCAFFOLD_MARKER, False))
