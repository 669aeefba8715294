"""The hand-encoded C-STORE response is byte for byte what pynetdicom encodes, and peers read it."""

from __future__ import annotations

import subprocess
import warnings
from io import BytesIO

import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import decode

from dicom_node.edge.store_response import encode_c_store_rsp
from tests.conftest import require_tool
from tests.factories import ct_slice, nodelay

CT = "1.2.840.10008.5.1.4.1.1.2"


def _response(**fields: object) -> C_STORE:
    rsp = C_STORE()
    rsp.MessageID = 7
    rsp.MessageIDBeingRespondedTo = 7
    rsp.Status = 0x0000
    for name, value in fields.items():
        setattr(rsp, name, value)
    return rsp


def _pynetdicom_encoding(rsp: C_STORE) -> bytes:
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    (pdata,) = message.encode_msg(1, 0)
    ((_, value),) = pdata.presentation_data_value_list
    assert value[0] == 0x03  # one command fragment, the last
    return bytes(value[1:])


@pytest.mark.parametrize("status", [0x0000, 0xB000, 0xB007, 0xA700, 0xC211])
@pytest.mark.parametrize("message_id", [1, 65535])
@pytest.mark.parametrize(
    "uids",
    [
        {"AffectedSOPClassUID": CT, "AffectedSOPInstanceUID": "1.2.3.4"},  # odd and even lengths
        {"AffectedSOPClassUID": "1.2.840.10008.5.1.4.1.1.7", "AffectedSOPInstanceUID": "1.2.3.45"},
        {"AffectedSOPClassUID": CT, "AffectedSOPInstanceUID": "2.25." + "9" * 59},  # 64 characters
        {"AffectedSOPInstanceUID": "1.2.3"},  # no class
        {"AffectedSOPClassUID": CT},  # no instance
        {},
    ],
)
def test_equals_what_pynetdicom_encodes(status: int, message_id: int, uids: dict[str, str]) -> None:
    rsp = _response(**uids)
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.Status = status
    assert encode_c_store_rsp(rsp) == _pynetdicom_encoding(rsp)


def test_decodes_as_pynetdicom_reads_a_response() -> None:
    uid = generate_uid()
    encoded = encode_c_store_rsp(_response(AffectedSOPClassUID=CT, AffectedSOPInstanceUID=uid, Status=0xB000))
    assert encoded is not None
    command = decode(BytesIO(encoded), True, True)
    assert command.CommandGroupLength == len(encoded) - 12
    assert (command.CommandField, command.MessageIDBeingRespondedTo) == (0x8001, 7)
    assert (command.CommandDataSetType, command.Status) == (0x0101, 0xB000)
    assert (command.AffectedSOPClassUID, command.AffectedSOPInstanceUID) == (CT, uid)


@pytest.mark.parametrize(
    "fields",
    [
        {"ErrorComment": "the data set could not be parsed"},
        {"OffendingElement": [0x00100020]},
        {"AffectedSOPInstanceUID": "1.2.3\u00e9"},  # not ASCII: pynetdicom's writer decides
    ],
)
def test_leaves_what_it_does_not_encode_to_pynetdicom(fields: dict[str, object]) -> None:
    rsp = _response(AffectedSOPClassUID=CT, AffectedSOPInstanceUID="1.2.3", Status=0xC000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pynetdicom warns of the invalid UID, and keeps it
        for name, value in fields.items():
            setattr(rsp, name, value)
    assert encode_c_store_rsp(rsp) is None


def _store(port: int, dataset: pydicom.Dataset, received: list[pydicom.Dataset]) -> pydicom.Dataset:
    ae = AE(ae_title="PEER")
    ae.add_requested_context(CT)
    handlers = [(evt.EVT_DIMSE_RECV, lambda event: received.append(event.message.command_set))]
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE", evt_handlers=handlers)
    assert assoc.is_established
    nodelay(assoc)
    try:
        return assoc.send_c_store(dataset)
    finally:
        assoc.release()


def test_a_peer_reads_the_fast_response_and_a_refusal_still_carries_its_comment(
    make_settings, run_node, tmp_path
) -> None:
    node = run_node(make_settings())
    port = node.address[1]
    good = ct_slice(0, study_uid=generate_uid(), series_uid=generate_uid(), frame_uid=generate_uid())
    received: list[pydicom.Dataset] = []
    status = _store(port, good, received)
    assert status.Status == 0x0000
    (command,) = received
    assert command.CommandField == 0x8001
    assert command.AffectedSOPInstanceUID == good.SOPInstanceUID
    assert command.AffectedSOPClassUID == CT
    assert "ErrorComment" not in command

    # An instance without a Study Instance UID is refused with a comment: pynetdicom's own path.
    other = ct_slice(1, study_uid=generate_uid(), series_uid=generate_uid(), frame_uid=generate_uid())
    del other.StudyInstanceUID
    received.clear()
    status = _store(port, other, received)
    (command,) = received
    assert command.Status == status.Status == 0xA900
    assert "Study Instance UID" in command.ErrorComment
    assert command.AffectedSOPInstanceUID == other.SOPInstanceUID

    # DCMTK reads the fast response as well: storescu -d prints what it received.
    path = tmp_path / "slice.dcm"
    third = ct_slice(2, study_uid=generate_uid(), series_uid=generate_uid(), frame_uid=generate_uid())
    third.save_as(path, enforce_file_format=True)
    result = subprocess.run(
        [require_tool("storescu"), "-d", "-aec", "DICOMNODE", "127.0.0.1", str(port), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    response = out[out.index("Received Store Response") :]
    assert "Message Type                  : C-STORE RSP" in response
    assert f"Affected SOP Instance UID     : {third.SOPInstanceUID}" in response
    assert "DIMSE Status                  : 0x0000: Success" in response
