"""The real test files in tests/data are the ones their README describes: SHA256SUMS holds for every one."""

from __future__ import annotations

import hashlib
from pathlib import Path

# Not data: the provenance note, the checksum list itself and the license texts.
NOT_DATA = {"README.md", "SHA256SUMS"}
LICENSES = "LICENSES"


def _listed(data: Path) -> dict[str, str]:
    listed: dict[str, str] = {}
    for number, line in enumerate((data / "SHA256SUMS").read_text().splitlines(), start=1):
        digest, sep, name = line.partition("  ")
        assert sep and len(digest) == 64, f"SHA256SUMS line {number} is not '<sha256>  <path>': {line!r}"
        listed[Path(name).as_posix().removeprefix("./")] = digest
    return listed


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def test_every_listed_file_has_its_checksum(test_data: Path) -> None:
    listed = _listed(test_data)
    assert len(listed) >= 51  # 20 + 20 CT slices, 4 NIfTI volumes, a radiograph, 6 SR/SEG objects
    wrong = {name for name, digest in listed.items() if _sha256(test_data / name) != digest}
    assert not wrong, f"these files in tests/data differ from SHA256SUMS (corrupted or replaced): {wrong}"


def test_every_data_file_is_listed(test_data: Path) -> None:
    present = {
        p.relative_to(test_data).as_posix()
        for p in test_data.rglob("*")
        if p.is_file() and p.name not in NOT_DATA and p.relative_to(test_data).parts[0] != LICENSES
    }
    assert present == set(_listed(test_data)), "tests/data and its SHA256SUMS disagree on which files exist"
