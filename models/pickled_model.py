"""Reading (and, for scaffolds, writing) a PyTorch file that pickles a whole ``nn.Module``.

TorchXRayVision publishes ``densenet121-res224-all`` as ``torch.save(model)``: a pickled module, not a
state dict. Loading it the library's way (``torch.load(weights_only=False)``) runs arbitrary pickle code
and needs the pickled classes importable (torchxrayvision, hence torchvision). This module never
imports them. ``read_pickled_state_dict`` unpickles with a restricted ``find_class``:

* module classes under ``torch.nn.``, ``torchvision.`` and ``torchxrayvision.`` become inert
  ``StandInModule`` subclasses that only keep their ``__dict__`` (no code of theirs runs);
* tensors are rebuilt from the raw storages by our own functions standing in for
  ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter``;
* ``collections.OrderedDict``, ``builtins.set`` and ``torch.Size`` are allowed;
* anything else (``os.system``, ``builtins.eval``, an unknown package's function) is refused.

Both container formats are read: the legacy stream (torch < 1.6: magic number, protocol, system info,
the pickle, then raw storages — what a 2020 release asset is) and the zip archive (``data.pkl`` plus
``data/<key>``). The state dict is then collected from the stand-in tree exactly as
``nn.Module.state_dict()`` would: own parameters, persistent buffers, then children, depth first.

``write_legacy_pickled_module`` writes a real network in the legacy format with the class paths of the
published file, for scaffolds and for testing the reader on a file it did not write itself.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

import torch
from torch import nn

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001
STAND_IN_PACKAGES = ("torch.nn.", "torchvision.", "torchxrayvision.")

_STORAGE_DTYPES: dict[str, torch.dtype] = {
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


class PickledModelError(ValueError):
    """The file is not a pickled model this reader accepts; the message says why."""


class StandInModule:
    """An inert stand-in for a pickled ``nn.Module`` subclass: it keeps the pickled ``__dict__`` only."""

    pickled_path: tuple[str, str] = ("", "")

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


@dataclass(frozen=True)
class _StorageType:
    name: str
    dtype: torch.dtype


class _Storage:
    """Raw bytes of one storage, filled in when the container provides them."""

    def __init__(self, dtype: torch.dtype, numel: int) -> None:
        self.dtype = dtype
        self.numel = numel
        self.data: bytes | None = None


@dataclass
class _LazyTensor:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def materialize(self) -> torch.Tensor:
        if self.storage.data is None:
            raise PickledModelError("a tensor refers to a storage the file does not contain")
        flat = torch.frombuffer(bytearray(self.storage.data), dtype=self.storage.dtype)
        if flat.numel() != self.storage.numel:
            raise PickledModelError("a storage holds fewer bytes than its header announces")
        return torch.as_strided(flat, self.size, self.stride, self.offset).clone()


def _rebuild_tensor(storage: _Storage, offset: int, size: Any, stride: Any, *_: Any) -> _LazyTensor:
    if not isinstance(storage, _Storage):
        raise PickledModelError("a tensor was pickled without a storage")
    return _LazyTensor(storage, int(offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    return data


def _stand_in_class(module: str, name: str) -> type[StandInModule]:
    return type(name, (StandInModule,), {"pickled_path": (module, name), "__module__": __name__})


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
    def __init__(self, file: IO[bytes], storage_bytes: Callable[[str], bytes] | None) -> None:
        super().__init__(file, encoding="latin1")
        self.storages: dict[str, _Storage] = {}
        self.stand_ins: dict[tuple[str, str], type[StandInModule]] = {}
        self._storage_bytes = storage_bytes

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        if module.startswith(STAND_IN_PACKAGES):
            # Inert: a stand-in runs no code of the class it replaces, whatever the pickle asks of it.
            key = (module, name)
            if key not in self.stand_ins:
                self.stand_ins[key] = _stand_in_class(module, name)
            return self.stand_ins[key]
        raise PickledModelError(
            f"the file refers to {module}.{name}, which a model file has no reason to contain; refusing to "
            "unpickle it (is this really the published weights file?)"
        )

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise PickledModelError("unknown persistent reference in the pickle")
        kind = pid[0]
        if kind == "module":
            return pid[1]
        if kind != "storage":
            raise PickledModelError(f"unknown persistent reference kind {kind!r}")
        storage_type, key, _location, numel = pid[1], str(pid[2]), pid[3], int(pid[4])
        view = pid[5] if len(pid) > 5 else None
        if not isinstance(storage_type, _StorageType):
            raise PickledModelError("a storage has no known element type")
        if view is not None:
            raise PickledModelError("storage views are not supported in model files")
        if key not in self.storages:
            storage = _Storage(storage_type.dtype, numel)
            if self._storage_bytes is not None:
                storage.data = self._storage_bytes(key)
            self.storages[key] = storage
        return self.storages[key]


def _load_legacy(stream: BinaryIO) -> Any:
    header = _HeaderUnpickler(stream)
    if header.load() != LEGACY_MAGIC_NUMBER:
        raise PickledModelError("not a PyTorch file (neither a zip archive nor the legacy format)")
    if header.load() != LEGACY_PROTOCOL_VERSION:
        raise PickledModelError("unsupported legacy PyTorch protocol version")
    header.load()  # system info: endianness and type sizes
    unpickler = _RestrictedUnpickler(stream, storage_bytes=None)
    result = unpickler.load()
    keys_loader = _HeaderUnpickler(stream)
    keys = keys_loader.load()
    for key in keys:
        storage = unpickler.storages.get(str(key))
        if storage is None:
            raise PickledModelError("the file lists a storage the pickle never used")
        (count,) = struct.unpack("<q", _read_exact(stream, 8))
        itemsize = torch.empty((), dtype=storage.dtype).element_size()
        if count not in (storage.numel, storage.numel * itemsize):
            raise PickledModelError("a storage's size header does not match the pickle")
        storage.data = _read_exact(stream, storage.numel * itemsize)
    return result


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise PickledModelError("the file is truncated")
    return data


class _HeaderUnpickler(pickle.Unpickler):
    """For the legacy format's plain-data pickles (magic number, system info, storage keys)."""

    def find_class(self, module: str, name: str) -> Any:
        raise PickledModelError(f"unexpected global {module}.{name} in a PyTorch file header")


def _load_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise PickledModelError("the zip archive has no single data.pkl")
        prefix = pickles[0][: -len("data.pkl")]

        def storage_bytes(key: str) -> bytes:
            try:
                return archive.read(f"{prefix}data/{key}")
            except KeyError as exc:
                raise PickledModelError(f"storage {key} is missing from the archive") from exc

        unpickler = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), storage_bytes)
        return unpickler.load()


def _materialize(obj: Any) -> Any:
    """Replace lazy tensors (now that every storage has its bytes) throughout the object tree."""
    if isinstance(obj, _LazyTensor):
        return obj.materialize()
    if isinstance(obj, StandInModule):
        for key, value in list(obj.__dict__.items()):
            obj.__dict__[key] = _materialize(value)
        return obj
    if isinstance(obj, OrderedDict):
        for key in list(obj):
            obj[key] = _materialize(obj[key])
        return obj
    if isinstance(obj, dict):
        return {k: _materialize(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_materialize(v) for v in obj]
    if isinstance(obj, tuple) and not isinstance(obj, torch.Size):
        return tuple(_materialize(v) for v in obj)
    return obj


def _state_items(module: StandInModule, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
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


def load_pickled_module(path: str | Path) -> StandInModule:
    """Unpickle a whole-module file into inert stand-ins with real tensors, running none of its code."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        root = _load_zip(path)
    else:
        with path.open("rb") as stream:
            try:
                root = _load_legacy(stream)
            except (pickle.UnpicklingError, EOFError, struct.error) as exc:
                raise PickledModelError(f"not a readable PyTorch file: {exc}") from exc
    root = _materialize(root)
    if not isinstance(root, StandInModule):
        raise PickledModelError(f"the file holds a {type(root).__name__}, not a pickled model")
    return root


def read_pickled_state_dict(path: str | Path) -> OrderedDict[str, torch.Tensor]:
    """The ``state_dict()`` of the model pickled in ``path``, read without unpickling any code."""
    root = load_pickled_module(path)
    items = OrderedDict(_state_items(root, ""))
    for key, value in items.items():
        if not isinstance(value, torch.Tensor):
            raise PickledModelError(f"{key} is not a tensor")
    return items


def is_scaffold(module: StandInModule) -> bool:
    """Whether the pickled model was written by ``scaffold`` (untrained)."""
    return bool(module.__dict__.get("dicom_node_scaffold", False))


# --- writing the legacy format (scaffolds, tests) -----------------------------------------------------


class _Global:
    """A name written into the pickle as GLOBAL ``module\\nname``."""

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name


class _FakeObject:
    """An object pickled as ``cls.__new__(cls)`` then ``__setstate__(state)`` (protocol 2 NEWOBJ)."""

    def __init__(self, cls: _Global, state: dict[str, Any]) -> None:
        self.cls = cls
        self.state = state


class _FakeTensor:
    def __init__(self, key: str, tensor: torch.Tensor, parameter: bool) -> None:
        self.key = key
        self.tensor = tensor.detach().cpu().contiguous()
        self.parameter = parameter


_STORAGE_NAMES = {dtype: name for name, dtype in _STORAGE_DTYPES.items()}


class _LegacyPickler(pickle._Pickler):  # the pure-Python pickler lets us write GLOBALs by hand
    def __init__(self, file: IO[bytes]) -> None:
        super().__init__(file, protocol=2)
        self.storages: dict[str, torch.Tensor] = {}
        self.dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[misc]
        self.dispatch[_Global] = _LegacyPickler._save_fake_global  # type: ignore[assignment]
        self.dispatch[_FakeObject] = _LegacyPickler._save_fake_object  # type: ignore[assignment]
        self.dispatch[_FakeTensor] = _LegacyPickler._save_fake_tensor  # type: ignore[assignment]

    def _save_fake_global(self, obj: _Global) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())  # type: ignore[attr-defined]

    def _save_fake_object(self, obj: _FakeObject) -> None:
        self.save(obj.cls)  # type: ignore[attr-defined]
        self.write(pickle.EMPTY_TUPLE + pickle.NEWOBJ)  # type: ignore[attr-defined]
        self.memoize(obj)  # type: ignore[attr-defined]
        self.save(obj.state)  # type: ignore[attr-defined]
        self.write(pickle.BUILD)  # type: ignore[attr-defined]

    def _save_fake_tensor(self, obj: _FakeTensor) -> None:
        self.storages[obj.key] = obj.tensor
        if obj.parameter:
            self.save(_Global("torch._utils", "_rebuild_parameter"))  # type: ignore[attr-defined]
            self.write(pickle.MARK)  # type: ignore[attr-defined]
        self.save(_Global("torch._utils", "_rebuild_tensor_v2"))  # type: ignore[attr-defined]
        self.write(pickle.MARK)  # type: ignore[attr-defined]
        storage_type = _Global("torch", _STORAGE_NAMES[obj.tensor.dtype])
        pid = ("storage", storage_type, obj.key, "cpu", obj.tensor.numel(), None)
        self.save(pid)  # type: ignore[attr-defined]
        self.write(pickle.BINPERSID)  # type: ignore[attr-defined]
        self.save(0)  # type: ignore[attr-defined]
        self.save(tuple(obj.tensor.shape))  # type: ignore[attr-defined]
        self.save(tuple(obj.tensor.stride()))  # type: ignore[attr-defined]
        self.save(False)  # type: ignore[attr-defined]
        self.save(OrderedDict())  # type: ignore[attr-defined]
        self.write(pickle.TUPLE + pickle.REDUCE)  # type: ignore[attr-defined]
        if obj.parameter:
            self.save(True)  # type: ignore[attr-defined]
            self.save(OrderedDict())  # type: ignore[attr-defined]
            self.write(pickle.TUPLE + pickle.REDUCE)  # type: ignore[attr-defined]


_SIMPLE = (bool, int, float, str, type(None))


def _fake_module(
    module: nn.Module, class_paths: Callable[[nn.Module], tuple[str, str]], counter: list[int]
) -> _FakeObject:
    state: dict[str, Any] = {}
    for key, value in module.__dict__.items():
        if key == "_parameters":
            state[key] = OrderedDict(
                (n, _fake_tensor(p, True, counter) if p is not None else None) for n, p in value.items()
            )
        elif key == "_buffers":
            state[key] = OrderedDict(
                (n, _fake_tensor(b, False, counter) if b is not None else None) for n, b in value.items()
            )
        elif key == "_modules":
            state[key] = OrderedDict(
                (n, _fake_module(m, class_paths, counter) if m is not None else None)
                for n, m in value.items()
            )
        elif key == "_non_persistent_buffers_set":
            state[key] = set(value)
        elif isinstance(value, _SIMPLE) or (
            isinstance(value, tuple) and all(isinstance(v, _SIMPLE) for v in value)
        ):
            state[key] = value
        elif isinstance(value, OrderedDict) and not value:
            state[key] = OrderedDict()  # empty hook dictionaries
    return _FakeObject(_Global(*class_paths(module)), state)


def _fake_tensor(tensor: torch.Tensor, parameter: bool, counter: list[int]) -> _FakeTensor:
    counter[0] += 1
    return _FakeTensor(str(counter[0]), tensor, parameter)


def write_legacy_pickled_module(
    module: nn.Module,
    path: str | Path,
    class_paths: Callable[[nn.Module], tuple[str, str]],
    extra_attributes: dict[str, Any] | None = None,
) -> None:
    """Write ``module`` as ``torch.save(module)`` did before torch 1.6, naming classes by ``class_paths``."""
    root = _fake_module(module, class_paths, [0])
    root.state.update(extra_attributes or {})
    buffer = io.BytesIO()
    for header in (LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION):
        pickle.dump(header, buffer, protocol=2)
    pickle.dump(
        {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}},
        buffer,
        protocol=2,
    )
    pickler = _LegacyPickler(buffer)
    pickler.dump(root)
    keys = list(pickler.storages)
    pickle.dump(keys, buffer, protocol=2)
    for key in keys:
        tensor = pickler.storages[key]
        buffer.write(struct.pack("<q", tensor.numel()))
        buffer.write(
            tensor.numpy().tobytes()
            if tensor.dtype != torch.bfloat16
            else tensor.view(torch.int16).numpy().tobytes()
        )
    Path(path).write_bytes(buffer.getvalue())
