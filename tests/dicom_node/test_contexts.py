"""The node's supported presentation contexts copy as pynetdicom's own deep copy would, only faster."""

from __future__ import annotations

import copy

from dicom_node.config import load_settings
from dicom_node.edge.scp import build_ae, quickly_copied


def _fields(context):
    return (
        context.context_id,
        str(context.abstract_syntax),
        [str(uid) for uid in context.transfer_syntax],
        context.result,
        context.scu_role,
        context.scp_role,
        context.as_scu,
        context.as_scp,
    )


def test_a_quick_copy_equals_a_deep_copy_and_shares_no_list(tmp_path) -> None:
    settings = load_settings(None, environ={"DICOM_NODE_DATA_DIR": str(tmp_path)})
    supported = build_ae(settings).supported_contexts
    quick = quickly_copied(supported)
    assert [_fields(c) for c in quick] == [_fields(c) for c in copy.deepcopy(supported)]
    # What pynetdicom does per association: a deep copy of the server's list.
    per_association = copy.deepcopy(quick)
    assert [_fields(c) for c in per_association] == [_fields(c) for c in supported]
    assert all(type(c) is type(quick[0]) for c in per_association)
    per_association[0].transfer_syntax.append("1.2.3")
    per_association[0].scp_role = not per_association[0].scp_role
    assert _fields(quick[0]) == _fields(supported[0])
