"""Bounded memory: data sets stream to disk, ``max_instance_bytes`` is enforced, the PDU is bounded."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE, _config
from sqlalchemy import func, select

from dicom_node.index.models import Instance
from tests.conftest import require_tool
from tests.factories import write_ct_series, write_large_ct
from tests.serving import (
    CT,
    EXPLICIT,
    dataset_sha256,
    free_port,
    index_rows,
    start_serve,
    stop_serve,
    vm_hwm_kib,
)

MiB = 2**20
LARGE = 200 * MiB
PARALLEL = 8
# What eight associations may add to serve's peak resident memory while each sends a 200 MB instance:
# each holds at most a PDU or two (max_pdu, 1 MiB) of its data set. Measured: 110 → 133 MiB; before
# data sets streamed to disk, 110 MiB → 3.1 GiB.
GROWTH_BOUND = 96 * MiB


@pytest.fixture(scope="session")
def large_instances(tmp_path_factory) -> list[Path]:
    """Eight 200 MB CT instances (sparse files on a disk folder, not a tmpfs: made in no time)."""
    folder = tmp_path_factory.mktemp("large")
    return [write_large_ct(folder / f"large{n}.dcm", LARGE) for n in range(PARALLEL)]


def test_instance_over_max_instance_bytes_is_refused(make_settings, run_node, tmp_path):
    node = run_node(make_settings(max_instance_bytes=8 * MiB))
    assert node.edge.ae.maximum_pdu_size == MiB  # the default max PDU announced to peers
    large = write_large_ct(tmp_path / "large.dcm", 16 * MiB)
    (small,) = write_ct_series(tmp_path / "small", 1, rows=64, columns=64)
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(CT, EXPLICIT)
    assoc = ae.associate("127.0.0.1", node.address[1], ae_title="DICOMNODE")
    assert assoc.is_established
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        refused = assoc.send_c_store(large)
        stored = assoc.send_c_store(small)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
        assoc.release()
    assert refused.Status == 0xA700, hex(refused.Status)
    assert str(refused.ErrorComment).endswith("bytes exceed max_instance_bytes (8388608)")
    assert stored.Status == 0x0000  # the same association goes on
    assert list(node.store.tmp.iterdir()) == []
    with node.database.sessions() as session:
        assert session.scalar(select(func.count(Instance.id))) == 1


def test_parallel_200_mb_instances_keep_serve_memory_bounded(tmp_path, large_instances):
    data_dir, port, log = tmp_path / "var", free_port(), tmp_path / "serve.log"
    proc = start_serve(data_dir, port, log)
    try:
        time.sleep(1.0)  # let start-up settle before taking the baseline
        baseline = vm_hwm_kib(proc.pid) * 1024
        senders = [
            subprocess.Popen(
                [require_tool("storescu"), "-aec", "DICOMNODE", "127.0.0.1", str(port), str(path)],
                stderr=subprocess.PIPE,
                text=True,
            )
            for path in large_instances
        ]
        for sender in senders:
            _, err = sender.communicate(timeout=300)
            assert sender.returncode == 0, err
        peak = vm_hwm_kib(proc.pid) * 1024
    finally:
        stop_serve(proc)
    print(f"serve VmHWM {baseline / MiB:.0f} MiB at start, {peak / MiB:.0f} MiB after {PARALLEL} × 200 MB")
    assert peak - baseline < GROWTH_BOUND, f"{baseline / MiB:.0f} → {peak / MiB:.0f} MiB"
    rows = index_rows(data_dir)
    assert len(rows) == PARALLEL
    for path in large_instances:
        row = rows[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)]
        assert row.size == (data_dir / "store" / row.path).stat().st_size > LARGE
    # One of them read back in full: byte-identical, and its row's hash is its data set's.
    row = rows[str(dcmread(large_instances[0], stop_before_pixels=True).SOPInstanceUID)]
    assert dataset_sha256(data_dir / "store" / row.path) == dataset_sha256(large_instances[0]) == row.sha256
