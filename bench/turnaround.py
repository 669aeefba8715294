"""Time to result for one radiograph, per ``complete_on`` mode: last instance acknowledged → result
acknowledged by the PACS, and where the time goes.

A real setup on this machine: ``dicom-node serve`` with its embedded workers (the single-host install:
SQLite, kombu's filesystem broker), DCMTK ``storescp`` as the PACS, and a pynetdicom modality that sends
one DX image and then gives the node its completion evidence:

* ``quiet`` — releases the association; the study completes after ``--quiet-period`` (default 5 s here;
  the shipped default is 30 s);
* ``association`` — releases the association; the study completes ``association_settle`` later;
* ``commitment`` — asks for Storage Commitment of the image on the same association (and waits for the
  N-EVENT-REPORT there before releasing);
* ``mpps`` — N-CREATE (IN PROGRESS) before the image, N-SET COMPLETED listing it after.

Each mode has its own route, told apart by the modality's calling AE title. Pipelines:

* ``oracle`` — ``tests/jobs/fixed_pipeline`` (``fixed-cost`` with no sleep): a fixed SR, the job
  machinery only. **Oracle, not a finding.**
* ``untrained`` — the real ``cxr-classification`` pipeline (DenseNet-121 at 224², CAMs, SR + SEG + PM
  writers) on scaffold weights imported for the run: **UNTRAINED**, timing only, meaningless as analysis.

Stages (medians over ``--runs``): ack → complete (study completion), complete → queued (routing and
enqueue by the reconciler), queued → started (the worker's claim), started → done (pipeline, writing,
storing the results), done → delivered (C-STORE to storescp acknowledged). One warm-up study per mode
goes first and is not counted (worker start-up, model load).

    .venv/bin/python bench/turnaround.py [--pipelines oracle,untrained] [--modes quiet,association,...]
                                         [--runs 5] [--quiet-period 5] [--settle 0.5]
                                         [--broker-url redis://127.0.0.1:6379/12]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import ModalityPerformedProcedureStep  # type: ignore[attr-defined]
from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicom_node.edge.commitment import STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE
from dicom_node.index.models import Delivery, DeliveryState, Job, Study
from tests.jobs.conftest import NodeUnderTest, Pacs, free_port, make_dx_study, wait_for

MODES = ("quiet", "association", "commitment", "mpps")
CALLING = {"quiet": "MOD_QUIET", "association": "MOD_ASSOC", "commitment": "MOD_COMMIT", "mpps": "MOD_MPPS"}
DX = "1.2.840.10008.5.1.4.1.1.1.1"
STAGES = ("ack→complete", "complete→queued", "queued→started", "started→done", "done→delivered", "total")
LABELS = {
    "oracle": "fixed-cost (oracle, not a finding)",
    "untrained": "cxr-classification UNTRAINED (scaffold weights)",
}


def _config(node: NodeUnderTest, pipeline: str, quiet: float, settle: float, models_dir: Path | None) -> None:
    lines = [
        'ae_title = "NODE"',
        f"port = {node.port}",
        'host = "127.0.0.1"',
        f'data_dir = "{node.data_dir}"',
        f"quiet_period = {quiet}",
        "series_quiet_period = 0.3",
        f"association_settle = {settle}",
        *([f'models_dir = "{models_dir}"'] if models_dir else []),
        "[jobs]",
        'plugins = ["tests.jobs.fixed_pipeline"]',
        "[analysis]",
        f"allow_untrained = {'true' if pipeline == 'untrained' else 'false'}",
        "[[destinations]]",
        'name = "pacs"',
        f'ae_title = "{node.pacs.ae_title}"',
        'host = "127.0.0.1"',
        f"port = {node.pacs.port}",
    ]
    for mode in MODES:
        lines += [
            "[[routes]]",
            f'pipeline = "{"fixed-cost" if pipeline == "oracle" else "cxr-classification"}"',
            'select = "first"',
            f'complete_on = "{mode}"',
            "[routes.match]",
            'modality = "DX"',
            f'calling_ae = "{CALLING[mode]}"',
        ]
    node.config.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _radiograph(folder: Path, untrained: bool) -> Path:
    """The oracle's 32×32 DX, or for the network a 512×512 PA chest radiograph (synthetic)."""
    if not untrained:
        return make_dx_study(folder)[1][0]
    folder.mkdir(parents=True, exist_ok=True)
    from bench.pipelines import synthetic_radiograph

    path = synthetic_radiograph(folder, size=512)
    # The patient and study module the writers copy into every result (the oracle's DX has them).
    header = dcmread(make_dx_study(folder / "header")[1][0], stop_before_pixels=True)
    ds = dcmread(path)
    for element in header:
        if element.tag.group in (0x0008, 0x0010, 0x0020) and element.tag not in ds:
            ds[element.tag] = element
    for keyword in ("PatientBirthDate", "PatientSex", "ReferringPhysicianName", "StudyID"):
        setattr(ds, keyword, getattr(ds, keyword, ""))
    ds.save_as(path, enforce_file_format=True)
    return path


def _item(path: Path) -> Dataset:
    source = dcmread(path, stop_before_pixels=True)
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return item


def send(port: int, path: Path, mode: str) -> tuple[str, datetime]:
    """Send ``path`` as the modality of ``mode`` would; the study UID and when its C-STORE was acked."""
    reports: list[Dataset] = []

    def on_report(event: evt.Event) -> tuple[int, None]:
        reports.append(event.event_information)
        return 0x0000, None

    ae = AE(ae_title=CALLING[mode])
    ae.add_requested_context(DX, "1.2.840.10008.1.2.1")
    ae.add_requested_context(STORAGE_COMMITMENT)
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate(
        "127.0.0.1", port, ae_title="NODE", evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)]
    )
    assert assoc.is_established, "the node refused the association"
    ds = dcmread(path)
    mpps_uid = generate_uid()
    try:
        if mode == "mpps":
            create = Dataset()
            step = Dataset()
            step.StudyInstanceUID = ds.StudyInstanceUID
            create.ScheduledStepAttributesSequence = [step]
            create.PerformedProcedureStepStatus = "IN PROGRESS"
            create.PerformedSeriesSequence = []
            status, _ = assoc.send_n_create(create, ModalityPerformedProcedureStep, mpps_uid)
            assert status.Status == 0
        status = assoc.send_c_store(ds)
        acked = datetime.now(UTC)
        assert status.Status == 0, f"C-STORE answered 0x{status.Status:04X}"
        if mode == "commitment":
            request = Dataset()
            request.TransactionUID = generate_uid()
            request.ReferencedSOPSequence = [_item(path)]
            status, _ = assoc.send_n_action(request, 1, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE)
            assert status.Status == 0
            wait_for(lambda: reports, 10, "the N-EVENT-REPORT", interval=0.01)
        if mode == "mpps":
            done = Dataset()
            done.PerformedProcedureStepStatus = "COMPLETED"
            series = Dataset()
            series.SeriesInstanceUID = ds.SeriesInstanceUID
            series.ReferencedImageSequence = [_item(path)]
            done.PerformedSeriesSequence = [series]
            status, _ = assoc.send_n_set(done, ModalityPerformedProcedureStep, mpps_uid)
            assert status.Status == 0
    finally:
        assoc.release()
    return str(ds.StudyInstanceUID), acked


@dataclass(frozen=True)
class Timing:
    stages: dict[str, float]


def _seconds(a: datetime | None, b: datetime | None) -> float:
    assert a is not None and b is not None
    return (b.astimezone(UTC) - a.astimezone(UTC)).total_seconds()


def measure(node: NodeUnderTest, study_uid: str, acked: datetime, timeout: float) -> Timing:
    database = node.database()
    try:

        def delivered() -> tuple[Job, Delivery] | None:
            with database.sessions() as session:
                row = session.execute(
                    select(Job, Delivery)
                    .join(Delivery, Delivery.job_id == Job.id)
                    .join(Study, Study.id == Job.study_id)
                    .where(Study.study_instance_uid == study_uid, Job.study_revision == 1)
                ).first()
                if row is not None and row[1].state == DeliveryState.DELIVERED:
                    return row[0], row[1]
                return None

        job, delivery = wait_for(delivered, timeout, f"the result of {study_uid}", interval=0.02)
    finally:
        database.dispose()
    # job.stable_at is the study's completion time the job was created for (workflow/routing.py).
    points = [acked, job.stable_at, job.queued_at, job.started_at, job.finished_at, delivery.delivered_at]
    stages = {name: _seconds(points[i], points[i + 1]) for i, name in enumerate(STAGES[:-1])}
    stages["total"] = _seconds(acked, delivery.delivered_at)
    return Timing(stages)


def run(
    pipeline: str, modes: list[str], runs: int, quiet: float, settle: float, root: Path, broker: str
) -> dict[str, Timing]:
    models_dir = None
    if pipeline == "untrained":
        from tests.jobs.test_untrained import install_scaffold

        models_dir = root / "models"
        install_scaffold(models_dir, root, "txrv-densenet121-res224-all")
    pacs = Pacs(root / "pacs", free_port())
    node = NodeUnderTest(root / "node", pacs, broker_url=broker)
    node.root.mkdir(parents=True)
    _config(node, pipeline, quiet, settle, models_dir)
    results: dict[str, Timing] = {}
    try:
        pacs.start()
        node.serve(worker=True, DICOM_NODE_TEST_PIPELINE_SECONDS="0")
        for mode in modes:
            warm_uid, warm_ack = send(
                node.port, _radiograph(root / f"warm-{mode}", pipeline == "untrained"), mode
            )
            measure(node, warm_uid, warm_ack, 180 + quiet)
            timings = []
            for index in range(runs):
                path = _radiograph(root / f"{mode}-{index}", pipeline == "untrained")
                study_uid, acked = send(node.port, path, mode)
                # A message the broker lost costs a whole queued lease (600 s) before the reconciler
                # re-sends it; that is a failed run here, not a figure.
                timings.append(measure(node, study_uid, acked, 180 + quiet))
            results[mode] = Timing({s: statistics.median(t.stages[s] for t in timings) for s in STAGES})
    except Exception:
        print(node.log("serve.log"), file=sys.stderr)
        for job in node.rows(Job):
            print(f"job {job.id} {job.pipeline} {job.state}: {job.error}", file=sys.stderr)
        raise
    finally:
        node.stop()
        pacs.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pipelines", default="oracle,untrained")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quiet-period", type=float, default=5.0)
    parser.add_argument("--settle", type=float, default=0.5)
    parser.add_argument("--broker-url", default="", help="default: the embedded filesystem broker")
    args = parser.parse_args()
    os.environ["TCP_NODELAY"] = "1"
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    print(
        f"{os.cpu_count()} CPUs; broker {args.broker_url or 'embedded filesystem://'}; quiet_period "
        f"{args.quiet_period} s, association_settle {args.settle} s; medians of {args.runs} runs, seconds"
    )
    for pipeline in [p.strip() for p in args.pipelines.split(",") if p.strip()]:
        with tempfile.TemporaryDirectory(prefix="turnaround-") as tmp:
            results = run(
                pipeline, modes, args.runs, args.quiet_period, args.settle, Path(tmp), args.broker_url
            )
        print(f"\n{LABELS[pipeline]}")
        print(f"{'complete_on':<12}" + "".join(f"{s:>17}" for s in STAGES))
        for mode, timing in results.items():
            print(f"{mode:<12}" + "".join(f"{timing.stages[s]:>17.3f}" for s in STAGES))


if __name__ == "__main__":
    main()
