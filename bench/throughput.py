"""Studies per hour against the number of workers on PostgreSQL + Redis, anchored by SQLite + embedded.

Each row starts a real setup — ``dicom-node serve``, ``dicom-node worker`` processes, DCMTK ``storescp``
as the PACS — queues ``--studies`` studies (sent with ``storescu``) before the workers start, and waits
until every result is delivered. Rows, all in one run:

- ``sqlite+embedded``: the default install, ``dicom-node serve`` with its embedded worker, the index in
  SQLite and kombu's ``filesystem://`` queue under the data dir (the anchor);
- ``postgres+redis`` × ``--workers``: ``serve --no-worker``, N ``dicom-node worker --queues gpu`` processes
  and one ``--queues io`` (delivery) worker, as ``deploy/compose.yaml`` runs them, on a fresh PostgreSQL
  database (``bench_suite`` on 127.0.0.1:5432) and Redis (db 9, flushed); the embedded worker is such a
  pair too (one ``gpu``, one ``io`` process);
- ``sqlite+redis`` × ``--sqlite-workers`` (default 2): N workers sharing one SQLite file, the setup where
  "database is locked" can appear; the last column counts such lines in every log of the row.

The pipeline (``--pipeline``):

- ``cxr-untrained`` (default): the real ``cxr-classification`` pipeline (DenseNet-121 at 224², its class
  activation maps, SR + Parametric Map writers) on UNTRAINED scaffold weights, allowed by
  ``[analysis] allow_untrained``, on copies of the repository's chest radiograph (1024², JPEG), each copy
  a new study. Its cost is real CPU work, so the host's cores show. The figures say nothing about
  findings, only about throughput. Each worker runs torch on ``--threads`` threads (default 1), so N
  workers want N cores.
- ``fixed``: ``tests/jobs/fixed_pipeline`` sleeping ``--cost`` seconds on small CT studies: the job
  machinery alone, no CPU work.

    .venv/bin/python bench/throughput.py [--pipeline cxr-untrained|fixed] [--workers 1,2,4] [--studies 12]

Columns: studies/h = studies / (last delivery − first job start); per worker = studies/h / workers;
speed-up = studies/h / that of ``postgres+redis`` with 1 worker; then medians over the studies of
queued → started (waiting for a worker, including the rest of the batch), started → written (pipeline +
writing, storing and indexing the results) and written → delivered (C-STORE to the PACS); and the count
of "database is locked" lines in the row's logs; load = the host's 5-minute load average at the row's end
(other work on the host shares its cores).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import redis
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicom_node.index.models import Delivery, DeliveryState, Job
from tests.jobs.conftest import NodeUnderTest, Pacs, free_port, make_ct_study, wait_for

REPO = Path(__file__).resolve().parents[1]
CXR = REPO / "tests" / "data" / "cxr" / "txrv_siim_cxr_sc_jpeg.dcm"
TXRV = "txrv-densenet121-res224-all"
REDIS_URL = "redis://127.0.0.1:6379/9"
POSTGRES_ADMIN = os.environ.get(
    "DICOM_NODE_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
POSTGRES_DATABASE = "bench_suite"
LOCKED = "database is locked"
CXR_ROUTE = """
[[routes]]
pipeline = "cxr-classification"
select = "first"
[routes.match]
modality = ["CR", "DX"]
view_position = ["PA", "AP"]

[analysis]
allow_untrained = true
"""


@dataclass(frozen=True)
class Setup:
    name: str
    workers: int
    database: str  # "sqlite" or "postgres"
    embedded: bool  # serve's own worker and the filesystem queue, else Redis and worker processes


def _aware(value: datetime | None) -> datetime:
    assert value is not None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _span(a: datetime | None, b: datetime | None) -> float:
    return (_aware(b) - _aware(a)).total_seconds()


def _fresh_postgres() -> str:
    """``bench_suite`` dropped and created again; its URL."""
    admin = create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{POSTGRES_DATABASE}" WITH (FORCE)'))
            connection.execute(text(f'CREATE DATABASE "{POSTGRES_DATABASE}"'))
    finally:
        admin.dispose()
    return make_url(POSTGRES_ADMIN).set(database=POSTGRES_DATABASE).render_as_string(hide_password=False)


def _install_scaffold(models_dir: Path, work: Path) -> None:
    """The repository's model manifests with UNTRAINED scaffold weights imported for the radiograph model."""
    from models.installer import import_weights, scaffold

    for folder in (REPO / "models").iterdir():
        if (folder / "configs").is_dir():
            shutil.copytree(folder / "configs", models_dir / folder.name / "configs", dirs_exist_ok=True)
    import_weights(scaffold(TXRV, work / f"{TXRV}.pt"), models_dir, model=TXRV)


def _radiograph_study(folder: Path) -> list[Path]:
    """The repository's radiograph as a new study (new study, series and instance UIDs; pixels as stored)."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = dcmread(CXR)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = folder / "cxr.dcm"
    ds.save_as(path, enforce_file_format=True)
    return [path]


def _locked_lines(node: NodeUnderTest) -> int:
    return sum(
        path.read_text(errors="replace").count(LOCKED) for path in node.root.glob("*.log") if path.is_file()
    )


def run(setup: Setup, args: argparse.Namespace, root: Path, models_dir: Path) -> dict[str, float]:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    pacs = Pacs(root / "pacs", free_port())
    node = NodeUnderTest(root / "node", pacs, "" if setup.embedded else REDIS_URL)
    if setup.database == "postgres":
        node.database_url = _fresh_postgres()
    node.root.mkdir(parents=True)
    node.write_config(reconcile_interval=1.0, running_lease=60, task_time_limit=600)
    cxr = args.pipeline == "cxr-untrained"
    if cxr:
        head = node.config.read_text().split("[[routes]]")[0]
        node.config.write_text(f'models_dir = "{models_dir}"\n' + head + CXR_ROUTE)
    env = {"DICOM_NODE_TORCH_THREADS": str(args.threads), "DICOM_NODE_TEST_PIPELINE_SECONDS": str(args.cost)}
    try:
        pacs.start()
        if setup.embedded:
            node.serve(worker=True, **env)
        else:
            node.serve()
        database = node.database()
        # Queue the whole batch first, so the figures measure the workers rather than the arrival rate
        # (the embedded worker starts with serve: it may begin while the batch still arrives).
        for index in range(args.studies):
            folder = root / f"study{index}"
            if cxr:  # proposed as JPEG baseline (-xy), as stored
                node.send(_radiograph_study(folder), options=("-xy",))
            else:
                node.send(make_ct_study(folder)[1])
        if not setup.embedded:
            wait_for(lambda: _queued(node) == args.studies, 120, "every study routed and queued")
            # As deploy/compose.yaml: N analysis workers on queue gpu, one delivery worker on queue io.
            for _ in range(setup.workers):
                node._start(["worker", "--queues", "gpu", "--concurrency", "1"], "worker.log", **env)
            node._start(["worker", "--queues", "io", "--concurrency", "1"], "worker-io.log", **env)

        def delivered() -> list[tuple[Job, Delivery]] | None:
            with database.sessions() as session:
                query = select(Job, Delivery).join(Delivery, Delivery.job_id == Job.id)
                rows = [(j, d) for j, d in session.execute(query).all()]
            done = [(j, d) for j, d in rows if d.state == DeliveryState.DELIVERED]
            return done if len({j.id for j, _ in done}) == args.studies and len(done) == len(rows) else None

        rows = wait_for(delivered, 120 + args.studies * 60, "every delivery", interval=0.5)
        database.dispose()
    finally:
        node.stop()
        pacs.stop()
        client.flushdb()
    locked = _locked_lines(node)
    jobs = {j.id: j for j, _ in rows}
    last = {j.id: max(_aware(d.delivered_at) for jj, d in rows if jj.id == j.id) for j in jobs.values()}
    first_start = min(_aware(j.started_at) for j in jobs.values())
    elapsed = (max(last.values()) - first_start).total_seconds()
    return {
        "studies_per_hour": args.studies / elapsed * 3600,
        "elapsed": elapsed,
        "queued_to_started": statistics.median(_span(j.queued_at, j.started_at) for j in jobs.values()),
        "started_to_written": statistics.median(_span(j.started_at, j.finished_at) for j in jobs.values()),
        "written_to_delivered": statistics.median(_span(j.finished_at, last[j.id]) for j in jobs.values()),
        "locked": locked,
        "load": os.getloadavg()[1],  # the host's 5-minute load average as the row ends
    }


def _queued(node: NodeUnderTest) -> int:
    database = node.database()
    try:
        with database.sessions() as session:
            return len(session.scalars(select(Job).where(Job.queued_at.is_not(None))).all())
    except Exception:  # the node has not created its schema yet
        return 0
    finally:
        database.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pipeline", choices=["cxr-untrained", "fixed"], default="cxr-untrained")
    parser.add_argument("--workers", default="1,2,4", help="postgres+redis rows")
    parser.add_argument("--sqlite-workers", default="2", help="sqlite+redis rows ('' for none)")
    parser.add_argument("--studies", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--cost", type=float, default=1.0, help="seconds the fixed pipeline sleeps")
    args = parser.parse_args()
    setups = [Setup("sqlite+embedded", 1, "sqlite", True)]
    setups += [Setup("postgres+redis", int(n), "postgres", False) for n in args.workers.split(",") if n]
    setups += [Setup("sqlite+redis", int(n), "sqlite", False) for n in args.sqlite_workers.split(",") if n]
    what = (
        f"cxr-classification on UNTRAINED scaffold weights, torch threads per worker {args.threads}"
        if args.pipeline == "cxr-untrained"
        else f"fixed pipeline sleeping {args.cost:.2f} s (no CPU work)"
    )
    print(f"{what}; {args.studies} studies; host CPUs {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")
    header = (
        f"{'setup':<16} {'workers':>7} {'studies/h':>9} {'per worker':>10} {'speed-up':>8} "
        f"{'elapsed s':>9} | median s: {'queued→started':>14} {'started→written':>15} "
        f"{'written→delivered':>17} | {'locked':>6} {'load':>5}"
    )
    print(header)
    print("-" * len(header))
    base: float | None = None
    with tempfile.TemporaryDirectory(prefix="dicom-node-bench-models-") as models:
        models_dir = Path(models) / "models"
        if args.pipeline == "cxr-untrained":
            _install_scaffold(models_dir, Path(models))
        for setup in setups:
            with tempfile.TemporaryDirectory(prefix="dicom-node-bench-") as folder:
                figures = run(setup, args, Path(folder), models_dir)
            rate = figures["studies_per_hour"]
            if setup.name == "postgres+redis" and setup.workers == 1:
                base = rate
            speed_up = f"{rate / base:>7.2f}×" if base else f"{'':>8}"
            print(
                f"{setup.name:<16} {setup.workers:>7} {rate:>9.0f} {rate / setup.workers:>10.0f} {speed_up} "
                f"{figures['elapsed']:>9.1f} | {'':>9} {figures['queued_to_started']:>14.2f} "
                f"{figures['started_to_written']:>15.2f} {figures['written_to_delivered']:>17.2f} | "
                f"{figures['locked']:>6.0f} {figures['load']:>5.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
