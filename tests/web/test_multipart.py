"""DICOMweb's multipart framing, on bytes that look like boundaries.

(QIDO-RS matching has no module of its own any more: it is the C-FIND engine's, tested over both
protocols in ``test_qido_as_c_find.py``.)
"""

from __future__ import annotations

import pytest

from dicom_node.web.multipart import MultipartError, encode_parts, split_parts


def test_multipart_round_trip_keeps_bytes() -> None:
    parts = [b"\r\n--not-the-boundary\r\n\x00\xff", b"", bytes(range(256)) * 4]
    body = b"preamble\r\n" + b"".join(encode_parts(iter(("application/dicom", p) for p in parts), "bnd"))
    assert [bytes(p.body) for p in split_parts(body, "bnd")] == parts
    assert {p.content_type for p in split_parts(body, "bnd")} == {"application/dicom"}
    with pytest.raises(MultipartError, match="closing boundary"):
        split_parts(body[:-12], "bnd")
    with pytest.raises(MultipartError, match="does not occur"):
        split_parts(body, "other")
