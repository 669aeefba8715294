"""DICOMweb on the node vs the DICOM edge on the same node, in the same run.

    .venv/bin/python bench/dicomweb.py [--runs 3]

Starts one ``dicom-node serve`` with DICOMweb on (loopback, a token file) and, for the shared 20-slice
CT (JPEG 2000, 3 MB), times: C-STORE with DCMTK storescu (TCP_NODELAY=1, one association; the anchor)
against STOW-RS of the same files in one request (dicomweb-client), with fresh UIDs each run so that
every run stores; WADO-RS of the whole study as stored against reading the same files from the store
directly (the anchor: what the disk gives); QIDO-RS of the studies and series metadata. Prints the
median of ``--runs`` as a table.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dicomweb_client.api import DICOMwebClient  # noqa: E402
from pydicom import dcmread  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from tests.web.conftest import CT_DIR, make_web_node  # noqa: E402


def fresh_copies(folder: Path) -> tuple[list[Path], list[object]]:
    """The CT with new study/series/instance UIDs, as files (for storescu) and data sets (STOW)."""
    folder.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    paths, datasets = [], []
    for source in sorted(CT_DIR.glob("*.dcm")):
        ds = dcmread(source)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = folder / source.name
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
        datasets.append(dcmread(io.BytesIO(path.read_bytes())))
    return paths, datasets


def measure(rows: dict[str, list[float]], name: str, action: Callable[..., object], *args: object) -> None:
    started = time.perf_counter()
    action(*args)
    rows.setdefault(name, []).append(time.perf_counter() - started)


def read_all(paths: list[Path]) -> list[bytes]:
    return [p.read_bytes() for p in paths]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-dicomweb-"))
    node = make_web_node(root / "node")
    node.start()
    web = DICOMwebClient(node.url, headers=node.headers("MODALITY"))
    rows: dict[str, list[float]] = {}
    try:
        for run in range(args.runs):
            files, _ = fresh_copies(root / f"c-store-{run}")
            measure(rows, "C-STORE 20 instances (storescu, anchor)", node.send, *files)
            _, datasets = fresh_copies(root / f"stow-{run}")
            measure(rows, "STOW-RS 20 instances (one request)", web.store_instances, datasets)
            study = str(datasets[0].StudyInstanceUID)
            stored = sorted((node.data_dir / "store" / study).rglob("*.dcm"))
            measure(rows, "read the 20 files from the store (anchor)", read_all, stored)
            as_stored = (("application/dicom", "*"),)
            measure(rows, "WADO-RS study, as stored", web.retrieve_study, study, as_stored)
            measure(rows, "WADO-RS study metadata", web.retrieve_study_metadata, study)
            measure(rows, "QIDO-RS studies (all)", web.search_for_studies)
    finally:
        node.stop()
    print(f"{'operation':<45} {'median s':>9} {'runs':>5}")
    for name, values in rows.items():
        print(f"{name:<45} {statistics.median(values):>9.3f} {len(values):>5}")


if __name__ == "__main__":
    main()
