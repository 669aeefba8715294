"""``dicom-node route [--explain] [--json] STUDY_UID``: a real CLI process on a real index.

The index holds two studies received through the real ``Ingest`` and routed by the reconciler's own
pass with the shipped defaults: the shared CT (routed to ``ct-vertebrae``) and a generated head CT
(routed nowhere).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from pydicom import dcmread

from dicom_node.config import load_settings
from dicom_node.index.database import Database
from dicom_node.index.models import utcnow
from dicom_node.jobs.reconciler import route_pending_studies
from dicom_node.storage.ingest import Ingest, describe_instance
from dicom_node.storage.store import InstanceStore
from dicom_node.workflow.assembly import assemble
from tests.factories import HEAD_CT, write_ct_series

CLI = [sys.executable, "-c", "from dicom_node.cli.app import main; main()"]


def _node(tmp_path: Path, test_data: Path) -> tuple[Path, str, str]:
    """A settings file and its index holding the two studies, routed; (settings file, CT UID, head UID)."""
    config = tmp_path / "node.toml"
    config.write_text(f'data_dir = "{tmp_path / "var"}"\n', encoding="utf-8")
    settings = load_settings(config, environ={})
    database = Database(settings.effective_database_url)
    database.upgrade()
    ingest = Ingest(InstanceStore(settings.storage_root), database)
    head = write_ct_series(tmp_path / "head", 64, rows=16, columns=16, thickness=2.5, headers=HEAD_CT)
    uids = []
    for paths in (sorted((test_data / "ct" / "totalseg_dicom").glob("*.dcm")), head):
        for path in paths:
            ds = dcmread(path, stop_before_pixels=True)
            received = describe_instance(ds, transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID))
            ingest.store_encoded(received, path.read_bytes())
        uids.append(received.study_instance_uid)
    try:
        assert len(assemble(database, settings, now=utcnow() + timedelta(hours=1))) == 2
        with database.session() as session:
            assert len(route_pending_studies(session, settings)) == 2  # the CT: nodules and vertebrae
    finally:
        database.dispose()
    return config, uids[0], uids[1]


def _route(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_NODE_")}
    return subprocess.run(
        [*CLI, "route", "--config", str(config), *args],
        env={**env, "COLUMNS": "250"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_route_explain_shows_every_condition_and_the_choice(tmp_path, test_data):
    config, ct_uid, head_uid = _node(tmp_path, test_data)

    routed = _route(config, "--json", ct_uid)
    assert routed.returncode == 0, routed.stderr
    document = json.loads(routed.stdout)
    assert document["routes"] == "defaults" and document["routing_reason"] is None
    assert [m["pipeline"] for m in document["decision"]["matches"]] == ["ct-lung-nodules", "ct-vertebrae"]
    assert [(j["pipeline"], j["state"], j["requires"]) for j in document["jobs"]] == [
        ("ct-lung-nodules", "queued", ["lungs"]),
        ("ct-vertebrae", "queued", ["spine"]),
    ]
    rules = {r["pipeline"]: r for r in document["rules"]}
    # No worker ran: the content checks are measured now, on the stored files of the chosen series.
    lungs = rules["ct-lung-nodules"]["content_checks"]
    assert lungs["source"] == "measured now" and lungs["sampled_slices"] == 8 and lungs["slices"] == 20
    assert lungs["checks"]["lungs"]["passed"] is False
    assert lungs["checks"]["lungs"]["reason"].startswith("too little lung in field of view: ")
    assert rules["ct-vertebrae"]["content_checks"]["checks"]["spine"]["figures"]["fraction"] == 1.0
    assert (
        rules["cxr-classification"]["requires"] == []
        and rules["cxr-classification"]["content_checks"] is None
    )
    assert rules["ct-vertebrae"]["chosen"]["series_number"] == 3
    assert rules["ct-vertebrae"]["chosen"]["why"].startswith("thinnest of 1 qualifying series (3 mm")
    (series,) = rules["ct-lung-nodules"]["series"]
    assert series["qualifies"] is True and series["reason"] is None
    verdicts = {v["criterion"]: v for v in series["match"]}
    assert verdicts["slice_thickness"] == {
        "criterion": "slice_thickness", "verdict": "pass", "seen": "3.0", "wanted": "<= 3", "reason": None
    }  # fmt: skip
    assert verdicts["extent_mm"]["verdict"] == "pass" and verdicts["extent_mm"]["seen"].startswith("41.0")
    geometry = series["match_any"][3]
    assert geometry["holds"] is True
    assert [(c["criterion"], c["verdict"], c["seen"]) for c in geometry["conditions"]][:2] == [
        ("body_part", "pass", "PARTIALBODY"),
        ("anatomic_region", "pass", "(none)"),
    ]

    text = _route(config, "--explain", ct_uid)
    assert text.returncode == 0, text.stderr
    assert (
        "rule 2 ct-vertebrae (select thinnest): series 3 chosen, thinnest of 1 qualifying series"
        in text.stdout
    )
    assert "pass body_part: saw PARTIALBODY; wants ['PARTIALBODY', 'WHOLEBODY', 'BODY', '']" in text.stdout
    assert "content check lungs (measured now): FAIL, too little lung in field of view: " in text.stdout
    assert "content check spine (measured now): pass, spine in field of view: " in text.stdout
    assert "match_any [4] holds:" in text.stdout  # ct-vertebrae's geometry clue

    unrouted = _route(config, "--json", head_uid)
    assert unrouted.returncode == 0, unrouted.stderr
    document = json.loads(unrouted.stdout)
    assert document["jobs"] == [] and document["decision"]["matches"] == []
    assert document["routing_reason"] == document["decision"]["reason"]
    assert document["routing_reason"].startswith(
        "no route matched — cxr-classification: series 2: modality CT"
    )
    (series,) = {r["pipeline"]: r for r in document["rules"]}["ct-lung-nodules"]["series"]
    excluded = series["match_any"][3]["conditions"][2]
    assert (excluded["criterion"], excluded["verdict"], excluded["seen"]) == (
        "description_not", "fail", "study_description 'CT HEAD'"
    )  # fmt: skip
    brief = _route(config, head_uid)
    assert brief.returncode == 0, brief.stderr
    assert f"stored routing reason: {document['routing_reason']}" in brief.stdout
    assert "rule 1 ct-lung-nodules (select thinnest): no series qualifies" in brief.stdout
    assert "wants" not in brief.stdout  # the conditions only with --explain

    missing = _route(config, "1.2.3.4")
    assert missing.returncode == 1 and "no study 1.2.3.4" in missing.stderr
