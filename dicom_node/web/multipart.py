"""``multipart/related`` bodies (RFC 2387) as DICOMweb sends and expects them (PS3.18 §8.6.1.2).

Parsed by hand rather than with the standard library's ``email`` parser: that one decodes parts as
text with surrogate escapes and may rewrite line ends of a binary part, and a Part 10 file must come
through byte for byte (its hash is the instance's identity). python-multipart handles only
``multipart/form-data``.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass


class MultipartError(ValueError):
    """The body is not the ``multipart/related`` message its Content-Type announced."""


@dataclass(frozen=True)
class Part:
    headers: dict[str, str]
    """Header names in lower case."""
    body: memoryview

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def media_type_parameters(value: str) -> tuple[str, dict[str, str]]:
    """``multipart/related; type="application/dicom"; boundary=x`` → the type and its parameters."""
    head, *rest = value.split(";")
    parameters: dict[str, str] = {}
    for item in rest:
        key, sep, raw = item.partition("=")
        if sep:
            parameters[key.strip().lower()] = raw.strip().strip('"')
    return head.strip().lower(), parameters


def split_parts(body: bytes, boundary: str) -> list[Part]:
    """The parts of a ``multipart/related`` body (preamble and epilogue ignored)."""
    if not boundary:
        raise MultipartError("the Content-Type names no boundary")
    delimiter = b"--" + boundary.encode("latin-1")
    view = memoryview(body)
    start = body.find(delimiter)
    if start < 0:
        raise MultipartError("the boundary does not occur in the body")
    parts: list[Part] = []
    position = start + len(delimiter)
    while True:
        if body[position : position + 2] == b"--":
            return parts  # the closing delimiter
        line_end = body.find(b"\r\n", position)
        if line_end < 0:
            raise MultipartError("a part ends before its headers")
        header_end = body.find(b"\r\n\r\n", line_end)
        if header_end < 0:
            raise MultipartError("a part's headers do not end")
        headers = _headers(body[line_end + 2 : header_end])
        content_start = header_end + 4
        following = body.find(b"\r\n" + delimiter, content_start)
        if following < 0:
            raise MultipartError("the body ends inside a part (no closing boundary)")
        parts.append(Part(headers, view[content_start:following]))
        position = following + 2 + len(delimiter)


def _headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.decode("latin-1").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers


def new_boundary() -> str:
    return f"dicomnode-{secrets.token_hex(12)}"


def encode_parts(parts: Iterator[tuple[str, bytes]], boundary: str) -> Iterator[bytes]:
    """``(content type, bytes)`` parts as a streamed ``multipart/related`` body."""
    delimiter = f"--{boundary}\r\n".encode("latin-1")
    for content_type, data in parts:
        yield delimiter + f"Content-Type: {content_type}\r\n\r\n".encode("latin-1")
        yield data
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("latin-1")
