"""The embedded workers ``serve`` starts: they carry the node's AE title, die with ``serve`` however it
dies, and a delivery never waits behind queued analyses.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from dicom_node.index.models import Delivery, Job, JobState, WorkerRecord
from dicom_node.jobs.embedded import FIRST_DELAY, HEALTHY_RUN, MAX_DELAY, restart_delay
from tests.jobs.conftest import make_ct_study, make_dx_study, wait_for
from tests.jobs.fixed_pipeline import result_uids


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a live process, ``None`` once it is gone (a zombie counts as gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    state, ppid = text.rsplit(")", 1)[1].split()[:2]
    return None if state in ("Z", "X") else (state, int(ppid))


def _descendants(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            parents[int(entry.name)] = stat[1]
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def test_kill_9_of_serve_takes_the_embedded_workers_with_it(tmp_path, pacs, node_factory):
    node = node_factory(broker_url="")
    serve = node.serve(worker=True)
    wait_for(lambda: node.rows(WorkerRecord), 60, f"the embedded worker\n{node.log('serve.log')}")
    time.sleep(2)  # every worker's pool process is up
    workers = _descendants(serve.pid)
    assert len(workers) >= 2, workers  # at least a Celery main process and its pool process
    os.kill(serve.pid, signal.SIGKILL)
    serve.wait()
    started = time.monotonic()
    wait_for(lambda: all(_stat(pid) is None for pid in workers), 10, "the orphaned workers to exit")
    assert time.monotonic() - started < 10


def test_results_leave_with_the_nodes_ae_title(tmp_path, recording_pacs, node_factory):
    recording_pacs.start()
    node = node_factory(broker_url="", destination=recording_pacs)
    node.serve("--ae-title", "NODEX", worker=True)  # the flag, not the settings file, names the node
    study_uid, files = make_ct_study(tmp_path / "study")
    node.send(files, called_ae_title="NODEX")
    expected = result_uids(study_uid)[1]
    wait_for(lambda: expected in recording_pacs.received(), 90, f"the SR\n{node.log('serve.log')}")
    assert [(r.sop_instance_uid, r.calling_ae_title) for r in recording_pacs.receptions] == [
        (expected, "NODEX")
    ]


def test_a_finished_radiograph_is_delivered_while_ct_jobs_run(tmp_path, pacs, node_factory):
    node = node_factory(broker_url="", delivery_backoff=0.3, delivery_backoff_max=1)
    node.serve(
        worker=True, DICOM_NODE_TEST_PIPELINE_SECONDS_CT="25", DICOM_NODE_TEST_PIPELINE_SECONDS_DX="0.1"
    )
    # The radiograph is analysed; its delivery waits for the PACS, which is down.
    dx_uid, dx_files = make_dx_study(tmp_path / "dx")
    node.send(dx_files)
    wait_for(
        lambda: any(d.failures >= 1 for d in node.rows(Delivery)),
        60,
        f"the radiograph's delivery to fail\n{node.log('serve.log')}",
    )
    # Two CT studies arrive: one analysis runs, the other is queued behind it.
    for index in range(2):
        node.send(make_ct_study(tmp_path / f"ct{index}")[1])
    wait_for(
        lambda: sorted(j.state for j in node.rows(Job) if j.id != 1) == [JobState.QUEUED, JobState.RUNNING],
        60,
        "one CT job running and one queued",
    )
    pacs.start()
    expected = result_uids(dx_uid)[1]
    wait_for(lambda: expected in pacs.received(), 20, f"the radiograph's SR\n{node.log('serve.log')}")
    ct_jobs = [j for j in node.rows(Job) if j.id != 1]
    assert all(j.state in (JobState.RUNNING, JobState.QUEUED) for j in ct_jobs), [j.state for j in ct_jobs]
    assert pacs.received() == [expected]
    # One worker per queue: the analysis one was busy all along.
    assert sorted(w.queues for w in node.rows(WorkerRecord)) == ["gpu", "io"]


def test_restart_backoff_doubles_in_a_crash_loop_and_starts_over_after_a_healthy_run():
    delays = []
    delay = 0.0
    for _ in range(8):
        delay = restart_delay(delay, ran_for=2.0)
        delays.append(delay)
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60]
    assert restart_delay(MAX_DELAY, ran_for=HEALTHY_RUN) == FIRST_DELAY
    assert restart_delay(restart_delay(MAX_DELAY, ran_for=HEALTHY_RUN + 1), ran_for=3.0) == 2 * FIRST_DELAY
