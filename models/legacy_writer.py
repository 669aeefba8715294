"""Writing a whole ``nn.Module`` in the legacy ``torch.save`` format, with the published file's class names.

For ``models scaffold`` (an untrained TorchXRayVision DenseNet in its published format) and for tests of
the reader in ``models.legacy_pickle``. The object pickle is written opcode by opcode because its
classes are named as torchxrayvision names them, and ``pickle`` only writes a class's global after
importing it from that name. The rest of the stream (headers, storage keys) is plain ``pickle.dump``.
The output is deterministic: storage keys are counters, not addresses.
"""

from __future__ import annotations

import io
import pickle
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.legacy_pickle import LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION, STORAGE_DTYPES


@dataclass
class _Module:
    class_path: tuple[str, str]
    state: dict[str, object]


@dataclass
class _Tensor:
    tensor: torch.Tensor
    parameter: bool


_SIMPLE = (bool, int, float, str, type(None))
_STORAGE_NAMES = {dtype: name for name, dtype in STORAGE_DTYPES.items()}


class _Emitter:
    """Protocol-2 opcodes for the few value types a module's state holds, written as torch < 1.6 did."""

    def __init__(self) -> None:
        self.out = bytearray(pickle.PROTO + b"\x02")
        self.storages: list[torch.Tensor] = []
        self._classes_written: set[tuple[str, str]] = set()

    def emit(self, value: object) -> None:
        if value is None:
            self.out += pickle.NONE
        elif isinstance(value, bool):
            self.out += pickle.NEWTRUE if value else pickle.NEWFALSE
        elif isinstance(value, int):
            self._int(value)
        elif isinstance(value, float):
            self.out += pickle.BINFLOAT + struct.pack(">d", value)
        elif isinstance(value, str):
            encoded = value.encode("utf-8", "surrogatepass")
            self.out += pickle.BINUNICODE + struct.pack("<I", len(encoded)) + encoded
        elif isinstance(value, tuple):
            self._tuple(value)
        elif isinstance(value, OrderedDict):
            self._global("collections", "OrderedDict")
            self.out += pickle.EMPTY_TUPLE + pickle.REDUCE
            self._set_items(value)
        elif isinstance(value, dict):
            self.out += pickle.EMPTY_DICT
            self._set_items(value)
        elif isinstance(value, set):
            self._global("__builtin__", "set")
            self.out += pickle.EMPTY_LIST
            if value:
                self.out += pickle.MARK
                for item in sorted(value):
                    self.emit(item)
                self.out += pickle.APPENDS
            self.out += pickle.TUPLE1 + pickle.REDUCE
        elif isinstance(value, _Module):
            self._module(value)
        elif isinstance(value, _Tensor):
            self._tensor(value)
        else:
            raise TypeError(f"cannot write a {type(value).__name__} into a legacy model file")

    def _int(self, value: int) -> None:
        if 0 <= value < 1 << 8:
            self.out += pickle.BININT1 + bytes([value])
        elif 0 <= value < 1 << 16:
            self.out += pickle.BININT2 + struct.pack("<H", value)
        elif -(1 << 31) <= value < 1 << 31:
            self.out += pickle.BININT + struct.pack("<i", value)
        else:
            encoded = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
            self.out += pickle.LONG1 + bytes([len(encoded)]) + encoded

    def _tuple(self, items: tuple[object, ...]) -> None:
        if not items:
            self.out += pickle.EMPTY_TUPLE
            return
        self.out += pickle.MARK
        for item in items:
            self.emit(item)
        self.out += pickle.TUPLE

    def _set_items(self, mapping: dict[Any, Any]) -> None:
        if mapping:
            self.out += pickle.MARK
            for key, value in mapping.items():
                self.emit(key)
                self.emit(value)
            self.out += pickle.SETITEMS

    def _global(self, module: str, name: str) -> None:
        self.out += pickle.GLOBAL + f"{module}\n{name}\n".encode()

    def _module(self, module: _Module) -> None:
        if module.class_path not in self._classes_written:
            # torch < 1.6 recorded each nn.Module class, the first time, as a persistent id
            # ("module", class, source file, source); None, None is what it wrote without the source.
            self._classes_written.add(module.class_path)
            self.out += pickle.MARK
            self.emit("module")
            self._global(*module.class_path)
            self.out += pickle.NONE + pickle.NONE + pickle.TUPLE + pickle.BINPERSID
        else:
            self._global(*module.class_path)
        self.out += pickle.EMPTY_TUPLE + pickle.NEWOBJ
        self.emit(module.state)
        self.out += pickle.BUILD

    def _tensor(self, value: _Tensor) -> None:
        tensor = value.tensor.detach().cpu().contiguous()
        key = str(len(self.storages))
        self.storages.append(tensor)
        if value.parameter:
            self._global("torch._utils", "_rebuild_parameter")
            self.out += pickle.MARK
        self._global("torch._utils", "_rebuild_tensor_v2")
        self.out += pickle.MARK
        self.out += pickle.MARK
        self.emit("storage")
        self._global("torch", _STORAGE_NAMES[tensor.dtype])
        self.emit(key)
        self.emit("cpu")
        self.emit(tensor.numel())
        self.out += pickle.NONE + pickle.TUPLE + pickle.BINPERSID
        self.emit(0)
        self.emit(tuple(tensor.shape))
        self.emit(tuple(tensor.stride()))
        self.emit(False)
        self.emit(OrderedDict())
        self.out += pickle.TUPLE + pickle.REDUCE
        if value.parameter:
            self.emit(True)
            self.emit(OrderedDict())
            self.out += pickle.TUPLE + pickle.REDUCE


def _module_state(module: nn.Module, class_paths: Callable[[nn.Module], tuple[str, str]]) -> _Module:
    state: dict[str, object] = {}
    for key, value in module.__dict__.items():
        if key in ("_parameters", "_buffers"):
            state[key] = OrderedDict(
                (n, _Tensor(t, key == "_parameters") if t is not None else None) for n, t in value.items()
            )
        elif key == "_modules":
            state[key] = OrderedDict(
                (n, _module_state(m, class_paths) if m is not None else None) for n, m in value.items()
            )
        elif key == "_non_persistent_buffers_set":
            state[key] = set(value)
        elif isinstance(value, _SIMPLE) or (
            isinstance(value, tuple) and all(isinstance(v, _SIMPLE) for v in value)
        ):
            state[key] = value
        elif isinstance(value, OrderedDict) and not value:
            state[key] = OrderedDict()  # empty hook dictionaries
    return _Module(class_paths(module), state)


def write_legacy_pickled_module(
    module: nn.Module,
    path: str | Path,
    class_paths: Callable[[nn.Module], tuple[str, str]],
    extra_attributes: dict[str, object] | None = None,
) -> None:
    """Write ``module`` as ``torch.save(module)`` did before torch 1.6, naming classes by ``class_paths``."""
    root = _module_state(module, class_paths)
    root.state.update(extra_attributes or {})
    emitter = _Emitter()
    emitter.emit(root)
    emitter.out += pickle.STOP
    buffer = io.BytesIO()
    for header in (LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION):
        pickle.dump(header, buffer, protocol=2)
    system_info = {
        "protocol_version": 1001,
        "little_endian": True,
        "type_sizes": {"short": 2, "int": 4, "long": 4},
    }
    pickle.dump(system_info, buffer, protocol=2)
    buffer.write(emitter.out)
    keys = [str(i) for i in range(len(emitter.storages))]
    pickle.dump(keys, buffer, protocol=2)
    for tensor in emitter.storages:
        buffer.write(struct.pack("<q", tensor.numel()))
        raw = tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor
        buffer.write(raw.numpy().tobytes())
    Path(path).write_bytes(buffer.getvalue())
