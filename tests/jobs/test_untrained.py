"""Untrained (scaffold) weights never analyse a study unless ``[analysis] allow_untrained`` says so.

A real node, a real worker and the real ``cxr-classification`` pipeline on imported scaffold weights:
the job ends ``skipped`` with the reason, nothing reaches the PACS, and ``status`` and ``models list``
say UNTRAINED. (With ``allow_untrained``, test_real_pipelines.py checks every object's marks.)
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from sqlalchemy import select

from dicom_node.index.models import Delivery, Job, JobState
from tests.jobs.conftest import CLI, NodeUnderTest, wait_for

TXRV = "txrv-densenet121-res224-all"
REASON = f"model {TXRV} has untrained (scaffold) weights (scaffold-"
HINT = "set [analysis] allow_untrained = true to run it for tests"

CXR_ROUTE = """
[[routes]]
pipeline = "cxr-classification"
select = "first"
[routes.match]
modality = ["CR", "DX"]
view_position = ["PA", "AP"]
"""


def install_scaffold(models_dir: Path, work: Path, name: str) -> str:
    """The repository's model folders (manifests, cards) with scaffold weights imported for ``name``."""
    import shutil

    from models.installer import import_weights, scaffold

    repo_models = Path(__file__).resolve().parents[2] / "models"
    for folder in repo_models.iterdir():
        if (folder / "configs").is_dir():
            shutil.copytree(folder / "configs", models_dir / folder.name / "configs", dirs_exist_ok=True)
    return import_weights(scaffold(name, work / f"{name}.pt"), models_dir, model=name).version


def configure(node: NodeUnderTest, models_dir: Path, routes: str, *, allow_untrained: bool | None) -> None:
    """The node's settings with ``models_dir``, ``routes`` for the fixed-cost route, and the setting."""
    head = node.config.read_text().split("[[routes]]")[0]
    analysis = (
        "" if allow_untrained is None else f"[analysis]\nallow_untrained = {str(allow_untrained).lower()}\n"
    )
    node.config.write_text(f'models_dir = "{models_dir}"\n' + head + routes + analysis)


def send(node: NodeUnderTest, path: Path, *options: str) -> None:
    result = subprocess.run(
        ["storescu", "-aet", "MODALITY", "-aec", "NODE", *options, "127.0.0.1", str(node.port), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_a_scaffold_model_is_skipped_with_the_reason_and_status_says_untrained(
    tmp_path, redis_db, pacs, node_factory, test_data
):
    models_dir = tmp_path / "models"
    version = install_scaffold(models_dir, tmp_path, TXRV)
    pacs.start()
    node = node_factory()
    configure(node, models_dir, CXR_ROUTE, allow_untrained=None)  # the default: not allowed
    node.serve()
    node.worker()
    send(node, test_data / "cxr" / "txrv_siim_cxr_sc_jpeg.dcm", "-xy")

    def finished() -> list[Job]:
        database = node.database()
        try:
            with database.sessions() as session:
                jobs = list(session.scalars(select(Job)).all())
                return [j for j in jobs if j.state not in (JobState.QUEUED, JobState.RUNNING)]
        finally:
            database.dispose()

    (job,) = wait_for(finished, 120, "the radiograph's job to end")
    assert job.state == JobState.SKIPPED, (job.state, job.error, node.log("worker.log"))
    assert job.error == f"{REASON}{version[len('scaffold-') :]}); {HINT}"
    database = node.database()
    with database.sessions() as session:
        assert session.scalars(select(Delivery)).all() == []
    database.dispose()
    assert pacs.received() == []

    status = json.loads(node.cli("status", "--json").stdout)
    assert status["analysis"] == {"allow_untrained": False}
    cxr = next(p for p in status["pipelines"] if p["name"] == "cxr-classification")
    assert cxr["installed"] and cxr["untrained"] and cxr["model"]["version"] == version
    assert "UNTRAINED" in cxr["detail"] and "skipped" in cxr["detail"]
    text = subprocess.run(
        [*CLI, "status"],
        cwd=node.root,
        env=node.env(COLUMNS="300"),
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    line = next(line for line in text.splitlines() if "pipeline cxr-classification" in line)
    assert f"UNTRAINED {TXRV} {version}" in line and "skipped" in line

    listed = subprocess.run(
        [*CLI, "models", "list", "--models-dir", str(models_dir)], capture_output=True, text=True, timeout=120
    )
    assert listed.returncode == 0, listed.stderr
    line = next(line for line in listed.stdout.splitlines() if line.startswith(TXRV))
    assert f"installed UNTRAINED {version}" in line
    as_json = subprocess.run(
        [*CLI, "models", "list", "--json", "--models-dir", str(models_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    (model,) = [m for m in json.loads(as_json.stdout) if m["name"] == TXRV]
    assert model["untrained"] is True and model["provenance"] == "scaffold"
