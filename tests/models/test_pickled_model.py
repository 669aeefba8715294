"""Pickled whole models are read (legacy stream and zip archive) and anything that would run code is
refused, with nothing run."""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from models.installer import scaffold
from models.legacy_pickle import LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION
from models.legacy_writer import write_legacy_pickled_module
from models.pickled_model import (
    PickledModelError,
    StandInModule,
    is_scaffold,
    load_pickled_module,
    read_pickled_state_dict,
)
from models.stand_ins import is_stand_in_name, stand_in_class
from models.txrv_densenet import XrvDenseNet121


def _network() -> nn.Module:
    torch.manual_seed(3)
    norm = nn.BatchNorm2d(2)
    norm(torch.rand(4, 2, 3, 3))  # a training step: running statistics and count of their own
    return nn.Sequential(nn.Conv2d(1, 2, 3), norm, nn.ReLU(), nn.Flatten(), nn.Linear(2, 2))


def _call_pickle(module: str, name: str, argument: str) -> bytes:
    """A protocol-2 pickle of ``module.name(argument)``: GLOBAL, the argument, TUPLE1, REDUCE."""
    encoded = argument.encode()
    return (
        pickle.PROTO
        + b"\x02"
        + pickle.GLOBAL
        + f"{module}\n{name}\n".encode()
        + pickle.BINUNICODE
        + struct.pack("<I", len(encoded))
        + encoded
        + pickle.TUPLE1
        + pickle.REDUCE
        + pickle.STOP
    )


def _legacy_file(path: Path, payload: bytes) -> Path:
    stream = io.BytesIO()
    headers: tuple[object, ...] = (LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION, {})
    for header in headers:
        pickle.dump(header, stream, protocol=2)
    stream.write(payload)
    pickle.dump([], stream, protocol=2)
    path.write_bytes(stream.getvalue())
    return path


def _zip_file(path: Path, payload: bytes) -> Path:
    """A torch zip archive (written by torch.save) whose ``data.pkl`` is replaced by ``payload``."""
    template = path.with_suffix(".template")
    torch.save({}, template)
    with zipfile.ZipFile(template) as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            target.writestr(info, payload if info.filename.endswith("/data.pkl") else source.read(info))
    return path


WRAPPERS = {"legacy": _legacy_file, "zip": _zip_file}


def test_txrv_scaffold_is_a_legacy_pickled_densenet_with_the_published_keys(tmp_path):
    path = scaffold("txrv-densenet121-res224-all", tmp_path / "txrv.pt")
    assert path.read_bytes()[:2] == b"\x80\x02"  # a protocol-2 pickle stream, not a zip archive
    module = load_pickled_module(path)
    assert type(module).pickled_path == ("torchxrayvision.models", "DenseNet")
    assert is_scaffold(module)
    state = read_pickled_state_dict(path)
    reference = XrvDenseNet121().state_dict()
    assert list(state) == list(reference)
    assert all(state[k].shape == reference[k].shape for k in reference)
    assert (
        sum(v.numel() for k, v in state.items() if "running" not in k and "num_batches" not in k) == 6_966_034
    )
    assert scaffold("txrv-densenet121-res224-all", tmp_path / "again.pt").read_bytes() == path.read_bytes()


def test_zip_format_whole_module_from_torch_save_is_read(tmp_path):
    network = _network()
    torch.save(network, tmp_path / "zip.pt")
    module = load_pickled_module(tmp_path / "zip.pt")
    assert type(module).pickled_path == ("torch.nn.modules.container", "Sequential")
    state = read_pickled_state_dict(tmp_path / "zip.pt")
    assert list(state) == list(network.state_dict())
    assert all(torch.equal(state[k], v) for k, v in network.state_dict().items())


def test_legacy_whole_module_written_by_torch_itself_is_read(tmp_path):
    network = _network()
    torch.save(network, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    state = read_pickled_state_dict(tmp_path / "legacy.pt")
    assert list(state) == list(network.state_dict())
    assert all(torch.equal(state[k], v) for k, v in network.state_dict().items())


def test_our_legacy_writer_output_is_what_torch_itself_loads(tmp_path):
    """The scaffold writer is faithful: torch's own legacy loader reads its output back (our file, so
    trusted; torch.nn class names so that torch can import them)."""
    network = _network()
    path = tmp_path / "ours.pt"
    write_legacy_pickled_module(network, path, lambda m: (type(m).__module__, type(m).__name__))
    loaded = torch.load(path, weights_only=False)
    assert isinstance(loaded, nn.Sequential) and type(loaded[0]) is nn.Conv2d
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in network.state_dict().items())
    assert all(torch.equal(read_pickled_state_dict(path)[k], v) for k, v in network.state_dict().items())


def _legacy_class_names(path: Path) -> list[str]:
    """The classes a legacy file's object pickle names, read statically (no unpickling)."""
    with path.open("rb") as stream:
        for _ in range(3):
            pickle.load(stream)  # magic number, protocol version, system info: plain data
        ops = pickletools.genops(stream)
        names = {str(arg).replace(" ", ".") for op, arg, _ in ops if op.name == "GLOBAL"}
    return sorted(n for n in names if is_stand_in_name(n))


def test_torch_weights_only_still_refuses_legacy_whole_modules(tmp_path):
    """Why models.legacy_pickle exists: if this fails, torch can read the published format itself."""
    torch.save(_network(), tmp_path / "torch-legacy.pt", _use_new_zipfile_serialization=False)
    ours = scaffold("txrv-densenet121-res224-all", tmp_path / "txrv.pt")
    for path in (tmp_path / "torch-legacy.pt", ours):
        names = _legacy_class_names(path)
        assert "torch.nn.modules.conv.Conv2d" in names
        stand_ins: list[Callable[..., object] | tuple[Callable[..., object], str]] = [
            (stand_in_class(*n.rsplit(".", 1)), n) for n in names
        ]
        with (
            torch.serialization.safe_globals(stand_ins),
            pytest.raises(pickle.UnpicklingError, match="Only persistent_load of storage is allowed"),
        ):
            torch.load(path, weights_only=True)


@pytest.mark.parametrize("container", sorted(WRAPPERS))
def test_crafted_files_are_valid_containers(tmp_path, container):
    """The containers the refusal tests use load when the pickle inside is harmless."""
    harmless = pickle.dumps(OrderedDict(a=1), protocol=2)
    path = WRAPPERS[container](tmp_path / "harmless.pt", harmless)
    assert torch.load(path, weights_only=True) == OrderedDict(a=1)
    with pytest.raises(PickledModelError, match="holds a OrderedDict, not a pickled model"):
        load_pickled_module(path)


@pytest.mark.parametrize("container", sorted(WRAPPERS))
@pytest.mark.parametrize(
    ("module", "name", "code"),
    [
        ("os", "system", "touch {marker}"),
        ("posix", "system", "touch {marker}"),
        ("builtins", "eval", "open({marker!r}, 'w').close()"),
        ("builtins", "exec", "open({marker!r}, 'w').close()"),
        ("subprocess", "getoutput", "touch {marker}"),
        ("torch.hub", "load", "{marker}"),
    ],
)
def test_a_pickle_that_calls_code_is_refused_and_nothing_runs(tmp_path, container, module, name, code):
    marker = tmp_path / "code-ran"
    path = WRAPPERS[container](
        tmp_path / "evil.pt", _call_pickle(module, name, code.format(marker=str(marker)))
    )
    with pytest.raises(PickledModelError, match=rf"refers to {module}\.{name}, .*no reason to contain"):
        read_pickled_state_dict(path)
    assert not marker.exists()


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))

    def __init__(self, marker: Path) -> None:
        self.marker = marker


@pytest.mark.parametrize("zip_format", [False, True])
def test_torch_save_of_an_exploit_is_refused(tmp_path, zip_format):
    marker = tmp_path / "code-ran"
    torch.save({"model": _Exploit(marker)}, tmp_path / "evil.pt", _use_new_zipfile_serialization=zip_format)
    with pytest.raises(PickledModelError, match="no reason to contain"):
        read_pickled_state_dict(tmp_path / "evil.pt")
    assert not marker.exists()


@pytest.mark.parametrize("container", sorted(WRAPPERS))
def test_a_stand_in_class_called_with_arguments_is_refused(tmp_path, container):
    payload = _call_pickle("torchxrayvision.utils", "download", "https://example.invalid/weights.pt")
    path = WRAPPERS[container](tmp_path / "call.pt", payload)
    with pytest.raises(PickledModelError, match="not a readable"):
        load_pickled_module(path)


def test_a_zip_archive_that_torch_refuses_says_what_torch_found(tmp_path):
    # ("module", class, None, None) as a persistent id, then NEWOBJ of that class with an empty state.
    module_pid = b"(X\x06\x00\x00\x00modulectorchxrayvision.models\nDenseNet\nNNtQ"
    payload = pickle.PROTO + b"\x02" + module_pid + b")\x81}b."  # EMPTY_TUPLE NEWOBJ EMPTY_DICT BUILD STOP
    assert isinstance(load_pickled_module(_legacy_file(tmp_path / "legacy.pt", payload)), StandInModule)
    found = r"unpickler: Only persistent_load of storage is allowed[^\n]*$"  # torch's advice left out
    with pytest.raises(PickledModelError, match=found):
        load_pickled_module(_zip_file(tmp_path / "module-pid.pt", payload))


def test_a_truncated_legacy_file_is_refused(tmp_path):
    path = scaffold("txrv-densenet121-res224-all", tmp_path / "txrv.pt")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(PickledModelError, match="truncated"):
        load_pickled_module(path)


def test_a_state_dict_file_is_not_a_pickled_model(tmp_path):
    torch.save(nn.Linear(2, 2).state_dict(), tmp_path / "sd.pt")
    with pytest.raises(PickledModelError, match="not a pickled model"):
        load_pickled_module(tmp_path / "sd.pt")
