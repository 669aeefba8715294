"""One real node run with the shipped configuration that several end-to-end tests read.

The vertebra network is the costly part of those tests (about 90–100 s a series on a CPU, more on a
loaded one), so it runs once per distinct input for the whole session: ``shipped_ct_run`` starts
``dicom-node serve`` and one ``dicom-node worker`` on Redis with the shipped routes, ``[analysis]
allow_untrained = true`` and scaffold vertebra weights (the published architecture, untrained:
plumbing, never findings; the nodule model stays uninstalled), DCMTK ``storescp`` as the PACS, and sends

- the shared CT (tests/data/ct/totalseg_dicom, 20 slices),
- its Legacy Converted Enhanced CT and Enhanced CT forms (one multi-frame object each, each a new study),
- a generated head CT without tags (so that geometry alone routes it),

waits until every job has finished and every delivery is delivered, stops the processes, and hands the
stopped node (its index, logs and settings: ``jobs`` and ``route --explain`` still run on it) and the
PACS folder to the tests (tests/jobs/test_shipped_ct.py). Each test reads only the studies it is about.
The tests that use it are in one file, so that pytest-xdist's ``--dist loadfile`` (scripts/test) gives
them one worker and the run happens once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from dicom_node.index.models import Delivery, DeliveryState, Job, JobState
from models.installer import import_weights, scaffold
from tests import phantoms
from tests.conftest import CT_DIR
from tests.factories import UNTAGGED_CT, write_ct_series
from tests.jobs.conftest import REDIS_URL, NodeUnderTest, Pacs, flushed_redis, free_port, wait_for
from tests.multiframe import enhanced_ct, legacy_converted_ct

VERTEBRAE = "monai-wholebody-ct-segmentation"
# Three vertebra runs one after the other on a CPU (4–9 min each on a loaded 2-core host); the tests
# that use the run take this as their timeout, because the first of them pays for it.
TIMEOUT = 2700


@dataclass(frozen=True)
class ShippedCtRun:
    """The stopped node, the PACS folder, and what was sent (files and study UIDs)."""

    node: NodeUnderTest
    pacs: Pacs
    ct: list[Path]
    legacy: Path
    enhanced: Path
    head: list[Path]

    @property
    def ct_study(self) -> str:
        return str(dcmread(self.ct[0], stop_before_pixels=True).StudyInstanceUID)

    @property
    def head_study(self) -> str:
        return str(dcmread(self.head[0], stop_before_pixels=True).StudyInstanceUID)


@pytest.fixture(scope="session")
def shipped_ct_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShippedCtRun]:
    root = tmp_path_factory.mktemp("shipped-ct-run")
    slices = sorted(CT_DIR.glob("*.dcm"))
    legacy = legacy_converted_ct(slices, root / "mf" / "legacy.dcm", study_uid=generate_uid())
    enhanced = enhanced_ct(slices, root / "mf" / "enhanced.dcm", study_uid=generate_uid())
    head = write_ct_series(
        root / "head",
        64,
        rows=200,
        columns=200,
        spacing=2.0,
        thickness=2.5,
        headers=UNTAGGED_CT,
        phantom=phantoms.head,
    )
    models_dir = root / "models"
    models_dir.mkdir()
    import_weights(scaffold(VERTEBRAE, root / "vertebrae.pt"), models_dir, model=VERTEBRAE)

    pacs = Pacs(root / "pacs", free_port())
    node = NodeUnderTest(root / "node", pacs, REDIS_URL)
    node.root.mkdir()
    node.write_config(task_time_limit=1800, running_lease=300)  # the vertebra model on CPU
    shipped = node.config.read_text().split("[[routes]]")[0]  # the harness's own routes removed
    node.config.write_text(shipped + "[analysis]\nallow_untrained = true\n")
    queues = flushed_redis(REDIS_URL)
    next(queues)
    try:
        pacs.start()
        node.serve()
        node._start(["worker", "--concurrency", "1"], "worker.log", DICOM_NODE_MODELS_DIR=str(models_dir))
        for options, files in (
            (("-xv", "+sd"), [CT_DIR]),
            (("-R",), [legacy]),
            (("-R",), [enhanced]),
            (("-xv",), head),
        ):
            node.send(files, options=options, timeout=120)

        def finished() -> bool:
            # Two jobs per study (vertebrae, nodules); none queued or running.
            jobs = node.rows(Job)
            return len(jobs) == 8 and all(j.state not in (JobState.QUEUED, JobState.RUNNING) for j in jobs)

        wait_for(finished, 2400, f"the eight jobs\n{node.log('worker.log')}")
        wanted = sum(j.state == JobState.SUCCEEDED for j in node.rows(Job))

        def delivered() -> bool:
            rows = node.rows(Delivery)
            return len(rows) == wanted and all(d.state == DeliveryState.DELIVERED for d in rows)

        wait_for(delivered, 180, f"every delivery\n{node.log('worker.log')}")
    finally:
        node.stop()
        pacs.stop()
        queues.close()  # flushes the Redis database again
    yield ShippedCtRun(node, pacs, [*slices], legacy, enhanced, head)
