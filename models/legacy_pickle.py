"""Reading the legacy ``torch.save`` stream (torch < 1.6) with a restricted unpickler.

Layout: pickles of the magic number, the protocol version and the system info, then the object pickle,
then a pickle listing the storage keys, then for each key an 8-byte element count and the raw bytes.
TorchXRayVision's ``densenet121-res224-all`` holds ``torch.save(model)``, a whole pickled ``nn.Module``,
in this format as far as can be told without the file (it cannot be downloaded here, so both formats
are read): its release tag ``v1`` is dated 2020-03-10, before torch 1.6 (July 2020) made the zip archive
the default, and torchxrayvision adds ``_non_persistent_buffers_set`` (new in torch 1.6) to every module
it unpickles, which only a module pickled by torch < 1.6 lacks.

Why not ``torch.load(path, weights_only=True)`` with the stand-ins allow-listed, as for zip archives
(``models.pickled_model``): when the legacy writer pickles a whole module it records each
``nn.Module`` class as a persistent id ``("module", cls, source_file, source)``
(``torch/serialization.py``, ``_legacy_save``, line 1056 in torch 2.13.0), and torch's weights-only
unpickler refuses every persistent id that is not a storage, before any allow-list is consulted
(``torch/_weights_only_unpickler.py`` line 533-540 in torch 2.13.0: "Only persistent_load of storage is
allowed, but got <class 'str'>"). ``tests/models/test_pickled_model.py`` checks that this still holds.

So this module reads the stream with ``pickle.Unpickler`` restricted by ``find_class`` (the mechanism
the Python documentation gives for restricting globals): classes under ``STAND_IN_PACKAGES`` become
inert stand-ins, tensors are rebuilt by our own functions standing in for ``torch._utils.
_rebuild_tensor_v2`` / ``_rebuild_parameter`` as views over storages filled after the pickle,
``collections.OrderedDict``, ``set``, ``frozenset`` and ``torch.Size`` are allowed, and any other
global is refused. No code named by the file runs.
"""

from __future__ import annotations

import pickle
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, BinaryIO

import torch

from models.stand_ins import PickledModelError, StandInModule, is_stand_in_name, refusal, stand_in_class

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

STORAGE_DTYPES: dict[str, torch.dtype] = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


@dataclass(frozen=True)
class _StorageType:
    name: str
    dtype: torch.dtype


class _Storage:
    """One storage: a flat tensor that the tensors of the pickle view, filled once the pickle is read."""

    def __init__(self, dtype: torch.dtype, numel: int) -> None:
        self.flat = torch.empty(numel, dtype=dtype)
        self.filled = numel == 0


def _rebuild_tensor(
    storage: object, offset: object, size: object, stride: object, *_: object
) -> torch.Tensor:
    if not isinstance(storage, _Storage):
        raise PickledModelError("a tensor was pickled without a storage")
    if not (isinstance(offset, int) and isinstance(size, tuple) and isinstance(stride, tuple)):
        raise PickledModelError("a tensor was pickled with a malformed offset, size or stride")
    try:
        return storage.flat.as_strided(tuple(int(s) for s in size), tuple(int(s) for s in stride), offset)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise PickledModelError(f"a tensor does not fit its storage: {exc}") from exc


def _rebuild_parameter(data: object, *_: object) -> object:
    return data


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,  # protocol 2 writes Python 2 names
    ("__builtin__", "frozenset"): frozenset,
    ("torch", "Size"): torch.Size,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, size_limit: int) -> None:
        super().__init__(file, encoding="latin1")
        self.storages: dict[str, _Storage] = {}
        self.stand_ins: dict[tuple[str, str], type[StandInModule]] = {}
        self._bytes_left = size_limit

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name, STORAGE_DTYPES[name])
        if is_stand_in_name(module):
            key = (module, name)
            if key not in self.stand_ins:
                self.stand_ins[key] = stand_in_class(module, name)
            return self.stand_ins[key]
        raise refusal(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise PickledModelError("unknown persistent reference in the pickle")
        kind = pid[0]
        if kind == "module" and len(pid) == 4:  # ("module", class, source file, source): the class
            return pid[1]
        if kind != "storage" or len(pid) != 6:
            raise PickledModelError(f"unknown persistent reference kind {kind!r}")
        storage_type, key, _location, numel, view = pid[1], str(pid[2]), pid[3], pid[4], pid[5]
        if not isinstance(storage_type, _StorageType) or not isinstance(numel, int) or numel < 0:
            raise PickledModelError("a storage has no known element type or size")
        if view is not None:
            raise PickledModelError("storage views are not supported in model files")
        if key not in self.storages:
            # The bytes follow the pickle: a storage larger than the file is a lie, refused before allocating.
            self._bytes_left -= numel * torch.empty((), dtype=storage_type.dtype).element_size()
            if self._bytes_left < 0:
                raise PickledModelError("the storages announced are larger than the file")
            self.storages[key] = _Storage(storage_type.dtype, numel)
        return self.storages[key]


class _HeaderUnpickler(pickle.Unpickler):
    """For the legacy format's plain-data pickles (magic number, system info, storage keys)."""

    def find_class(self, module: str, name: str) -> Any:
        raise PickledModelError(f"unexpected global {module}.{name} in a PyTorch file header")


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise PickledModelError("the file is truncated")
    return data


def read_legacy(stream: BinaryIO, file_size: int) -> object:
    """The object pickled in a legacy stream, with stand-ins for its classes and real tensors."""
    header = _HeaderUnpickler(stream)
    if header.load() != LEGACY_MAGIC_NUMBER:
        raise PickledModelError("not a PyTorch file (neither a zip archive nor the legacy format)")
    if header.load() != LEGACY_PROTOCOL_VERSION:
        raise PickledModelError("unsupported legacy PyTorch protocol version")
    header.load()  # system info: endianness and type sizes
    unpickler = _RestrictedUnpickler(stream, file_size)
    result = unpickler.load()
    keys = _HeaderUnpickler(stream).load()
    if not isinstance(keys, list):
        raise PickledModelError("the file has no list of storages after the pickle")
    for key in keys:
        storage = unpickler.storages.get(str(key))
        if storage is None:
            raise PickledModelError("the file lists a storage the pickle never used")
        (count,) = struct.unpack("<q", _read_exact(stream, 8))
        numel, itemsize = storage.flat.numel(), storage.flat.element_size()
        if count not in (numel, numel * itemsize):
            raise PickledModelError("a storage's size header does not match the pickle")
        if numel:
            raw = torch.frombuffer(bytearray(_read_exact(stream, numel * itemsize)), dtype=storage.flat.dtype)
            storage.flat.copy_(raw)
        storage.filled = True
    if not all(storage.filled for storage in unpickler.storages.values()):
        raise PickledModelError("a tensor refers to a storage the file does not contain")
    return result
