"""DICOMweb against a real ``dicom-node serve``: the field's own client (dicomweb-client) searches,
retrieves metadata, frames and instances, and stores through STOW-RS; plain HTTP for the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from tests.serving import assert_consistent
from tests.web.conftest import CT_DIR, REPO, WebNode

SEG = REPO / "tests" / "data" / "sr_seg" / "seg_image_ct_binary.dcm"
CT_FILES = sorted(CT_DIR.glob("*.dcm"))


def client(node: WebNode, name: str = "viewer") -> DICOMwebClient:
    return DICOMwebClient(node.url, headers=node.headers(name))


@pytest.fixture(scope="module")
def ct() -> dict[str, str]:
    ds = dcmread(CT_FILES[0], stop_before_pixels=True)
    return {
        "study": str(ds.StudyInstanceUID),
        "series": str(ds.SeriesInstanceUID),
        "instance": str(ds.SOPInstanceUID),
        "patient_id": str(ds.PatientID),
        "patient_name": str(ds.PatientName),
    }


def test_requests_without_a_valid_token_are_refused(web_node: WebNode, ct: dict[str, str]) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer not-a-token-of-this-node"},
        {"Authorization": "Basic eDp5"},
    ):
        response = requests.get(web_node.url + "/studies", headers=headers, timeout=10)
        assert response.status_code == 401, response.text
        assert response.headers["WWW-Authenticate"].startswith('Bearer realm="dicom-node"')
        assert "error" in response.json()
    refused = requests.get(f"{web_node.url}/studies/{ct['study']}/metadata", timeout=10)
    assert refused.status_code == 401
    assert ct["patient_name"] not in refused.text


def test_search_matches_as_c_find(web_node: WebNode, ct: dict[str, str]) -> None:
    web = client(web_node)
    studies = web.search_for_studies(search_filters={"PatientID": ct["patient_id"]})
    assert [s["0020000D"]["Value"][0] for s in studies] == [ct["study"]]
    assert studies[0]["00201208"]["Value"] == [20]  # Number of Study Related Instances
    assert studies[0]["00080061"]["Value"] == ["CT"]
    # Wildcards, case-insensitive person names, UID lists, date ranges; a miss finds nothing.
    assert web.search_for_studies(search_filters={"PatientName": "example^total*"})
    assert web.search_for_studies(search_filters={"StudyInstanceUID": f"1.2.3,{ct['study']}"})
    assert web.search_for_studies(search_filters={"StudyDate": "20220101-20221231"})
    assert web.search_for_studies(search_filters={"StudyDate": "20230101-"}) == []
    assert web.search_for_studies(search_filters={"PatientID": "SOMEONE-ELSE"}) == []
    series = web.search_for_series(ct["study"], search_filters={"Modality": "CT"})
    assert [s["0020000E"]["Value"][0] for s in series] == [ct["series"]]
    assert series[0]["00201209"]["Value"] == [20]
    instances = web.search_for_instances(ct["study"], ct["series"])
    assert len(instances) == 20
    paged = web.search_for_instances(ct["study"], ct["series"], limit=5, offset=18)
    assert len(paged) == 2
    unknown = requests.get(web_node.url + "/studies?NoSuchKeyword=1", headers=web_node.headers(), timeout=10)
    assert unknown.status_code == 400
    assert "NoSuchKeyword" in unknown.json()["error"]


def test_metadata_gives_bulk_data_by_uri(web_node: WebNode, ct: dict[str, str]) -> None:
    metadata = client(web_node).retrieve_series_metadata(ct["study"], ct["series"])
    assert len(metadata) == 20
    first = next(m for m in metadata if m["00080018"]["Value"] == [ct["instance"]])
    assert first["00100010"]["Value"][0]["Alphabetic"] == ct["patient_name"]
    uri = first["7FE00010"]["BulkDataURI"]
    assert uri.startswith(web_node.url + f"/studies/{ct['study']}/series/{ct['series']}/instances/")
    assert "InlineBinary" not in first["7FE00010"]


def test_frames_as_stored_and_decoded(web_node: WebNode, ct: dict[str, str]) -> None:
    source = dcmread(CT_FILES[0])
    stored_syntax = str(source.file_meta.TransferSyntaxUID)
    assert stored_syntax == "1.2.840.10008.1.2.4.90"  # JPEG 2000 lossless, as the test data holds it
    web = client(web_node)
    ds = dcmread(CT_FILES[0], stop_before_pixels=True)
    uids = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
    compressed = web.retrieve_instance_frames(*uids, frame_numbers=[1], media_types=(("image/jp2",),))
    assert compressed == list(generate_frames(source.PixelData, number_of_frames=1))
    decoded = web.retrieve_instance_frames(
        *uids, frame_numbers=[1], media_types=(("application/octet-stream", "*"),)
    )
    assert decoded == [source.pixel_array.tobytes()]
    refused = requests.get(
        f"{web_node.url}/studies/{uids[0]}/series/{uids[1]}/instances/{uids[2]}/frames/1",
        headers={**web_node.headers(), "Accept": 'multipart/related; type="image/jls"'},
        timeout=10,
    )
    assert refused.status_code == 406, refused.text
    missing = requests.get(
        f"{web_node.url}/studies/{uids[0]}/series/{uids[1]}/instances/{uids[2]}/frames/2",
        headers=web_node.headers(),
        timeout=10,
    )
    assert missing.status_code == 404


def test_instances_as_stored_or_uncompressed(web_node: WebNode, ct: dict[str, str]) -> None:
    web = client(web_node)
    source = dcmread(CT_FILES[0])
    uids = (str(source.StudyInstanceUID), str(source.SeriesInstanceUID), str(source.SOPInstanceUID))
    as_stored = web.retrieve_instance(*uids, media_types=(("application/dicom", "*"),))
    assert as_stored.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID
    assert as_stored.PixelData == source.PixelData
    # Explicit VR Little Endian asked for (and the PS3.18 default without a transfer-syntax): decoded.
    uncompressed = web.retrieve_instance(*uids, media_types=(("application/dicom", "1.2.840.10008.1.2.1"),))
    assert uncompressed.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert (uncompressed.pixel_array == source.pixel_array).all()
    default = requests.get(
        f"{web_node.url}/studies/{uids[0]}/series/{uids[1]}/instances/{uids[2]}",
        headers={**web_node.headers(), "Accept": 'multipart/related; type="application/dicom"'},
        timeout=30,
    )
    assert default.status_code == 200
    assert "transfer-syntax=1.2.840.10008.1.2.1" in default.content[:300].decode("latin-1")
    unsupported = requests.get(
        f"{web_node.url}/studies/{uids[0]}/series/{uids[1]}/instances/{uids[2]}",
        headers={
            **web_node.headers(),
            "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50',
        },
        timeout=30,
    )
    assert unsupported.status_code == 406
    study = web.retrieve_study(uids[0], media_types=(("application/dicom", "*"),))
    assert sorted(str(d.SOPInstanceUID) for d in study) == sorted(
        str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in CT_FILES
    )
    gone = requests.get(f"{web_node.url}/studies/1.2.3.4", headers=web_node.headers(), timeout=10)
    assert gone.status_code == 404


def test_stow_stores_durably_and_the_instance_is_found(web_node: WebNode, tmp_path: Path) -> None:
    seg = dcmread(SEG)
    seg.SOPInstanceUID = generate_uid()  # a fresh instance each run of the module
    seg.file_meta.MediaStorageSOPInstanceUID = seg.SOPInstanceUID
    web = client(web_node, "MODALITY")
    response = web.store_instances([seg])
    stored = response.ReferencedSOPSequence
    assert [str(item.ReferencedSOPInstanceUID) for item in stored] == [str(seg.SOPInstanceUID)]
    assert "FailedSOPSequence" not in response
    assert stored[0].RetrieveURL.endswith(f"/instances/{seg.SOPInstanceUID}")
    # Found by QIDO-RS, listed by `dicom-node studies`, and retrieved byte for byte (data set).
    found = web.search_for_instances(search_filters={"SOPInstanceUID": str(seg.SOPInstanceUID)})
    assert len(found) == 1
    studies = json.loads(web_node.cli("studies", "--json").stdout)["studies"]
    assert str(seg.StudyInstanceUID) in {s["study_instance_uid"] for s in studies}
    back = web.retrieve_instance(
        str(seg.StudyInstanceUID),
        str(seg.SeriesInstanceUID),
        str(seg.SOPInstanceUID),
        media_types=(("application/dicom", "*"),),
    )
    assert back.PixelData == seg.PixelData
    assert back.file_meta.SourceApplicationEntityTitle == "MODALITY"


def test_a_stowed_instance_answers_c_find(web_node: WebNode) -> None:
    """STOW-RS → C-FIND: skipped until the node has a C-FIND SCP (branch h-qr), then it must pass."""
    seg = dcmread(SEG)
    seg.StudyInstanceUID, seg.SeriesInstanceUID = generate_uid(), generate_uid()
    seg.SOPInstanceUID = generate_uid()
    seg.file_meta.MediaStorageSOPInstanceUID = seg.SOPInstanceUID
    assert "ReferencedSOPSequence" in client(web_node, "MODALITY").store_instances([seg])
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", web_node.dicom_port, ae_title="DICOMNODE")
    assert not assoc.is_rejected, "the node rejected the association"
    if not assoc.is_established:  # the A-ASSOCIATE-AC accepted no presentation context
        pytest.skip("the node answers C-FIND with 'abstract syntax not supported' (no C-FIND SCP yet)")
    try:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = str(seg.StudyInstanceUID)
        answers = [
            identifier
            for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
            if status and status.Status in (0xFF00, 0xFF01) and identifier is not None
        ]
        assert [str(a.StudyInstanceUID) for a in answers] == [str(seg.StudyInstanceUID)]
    finally:
        assoc.release()


def test_stow_refusals_leave_nothing_behind(web_node: WebNode) -> None:
    ok = dcmread(SEG)
    ok.SOPInstanceUID = generate_uid()
    ok.file_meta.MediaStorageSOPInstanceUID = ok.SOPInstanceUID
    good = _part10(ok)
    truncated = good[: len(good) - 100]  # cut inside its pixel data
    boundary = "b0undary"
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
            for part in (good, truncated, b"not dicom at all")
        )
        + f"--{boundary}--\r\n".encode()
    )
    response = requests.post(
        web_node.url + "/studies",
        data=body,
        headers={
            **web_node.headers("MODALITY"),
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        },
        timeout=30,
    )
    assert response.status_code == 202, response.text  # some stored, some failed
    answer = response.json()
    assert [i["00081155"]["Value"][0] for i in answer["00081199"]["Value"]] == [str(ok.SOPInstanceUID)]
    failures = answer["00081198"]["Value"]
    assert [f["00081197"]["Value"][0] for f in failures] == [0xC210, 0xC210]
    only_bad = requests.post(
        web_node.url + "/studies",
        data=f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\nxx\r\n--{boundary}--\r\n",
        headers={
            **web_node.headers("MODALITY"),
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        },
        timeout=30,
    )
    assert only_bad.status_code == 409
    wrong_type = requests.post(
        web_node.url + "/studies",
        data=b"{}",
        headers={**web_node.headers("MODALITY"), "Content-Type": "application/json"},
        timeout=30,
    )
    assert wrong_type.status_code == 415
    acknowledged = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in CT_FILES]
    assert_consistent(web_node.data_dir, [*acknowledged, str(ok.SOPInstanceUID)], hashes=True)


def _part10(ds) -> bytes:
    from io import BytesIO

    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_cors_preflight_and_no_phi_in_logs(web_node: WebNode, ct: dict[str, str]) -> None:
    preflight = requests.options(
        web_node.url + "/studies",
        headers={
            "Origin": "http://viewer.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
        timeout=10,
    )
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "http://viewer.example"
    other = requests.options(
        web_node.url + "/studies",
        headers={"Origin": "http://elsewhere.example", "Access-Control-Request-Method": "GET"},
        timeout=10,
    )
    assert "Access-Control-Allow-Origin" not in other.headers
    found = requests.get(
        web_node.url + "/studies",
        params={"PatientName": ct["patient_name"]},
        headers={**web_node.headers(), "Origin": "http://viewer.example"},
        timeout=10,
    )
    assert found.status_code == 200 and len(found.json()) == 1
    assert found.headers["Access-Control-Allow-Origin"] == "http://viewer.example"
    log = web_node.log()
    assert "GET /dicom-web/studies 200 viewer" in log
    assert ct["patient_name"] not in log and ct["patient_name"].split("^")[0] not in log
    assert ct["patient_id"] not in log


def test_status_shows_dicomweb_requests(web_node: WebNode) -> None:
    requests.get(web_node.url + "/studies", headers=web_node.headers(), timeout=10)
    status = json.loads(web_node.cli("status", "--json").stdout)
    served = status["dicomweb"]
    assert served["enabled"] is True
    assert served["requests"]["qido"] >= 1
