"""The emulator's multipart reader: what httpx and the official SDKs send, and malformed bodies."""

from __future__ import annotations

import httpx
import pytest

from workers.emulator.multipart import MultipartError, parse_form


def encoded(files: dict, data: dict) -> tuple[str, bytes]:
    request = httpx.Request("POST", "http://x/", files=files, data=data)
    return request.headers["content-type"], request.read()


def test_reads_a_file_and_a_field_as_httpx_encodes_them():
    content = b'{"custom_id":"a"}\n' * 1000 + b"--not-a-boundary\r\n"
    ctype, body = encoded({"file": ("in.jsonl", content, "application/jsonl")}, {"purpose": "batch"})
    form = parse_form(ctype, body)
    assert form["file"].filename == "in.jsonl"
    assert form["file"].content == content
    assert form["purpose"].filename is None
    assert form["purpose"].content == b"batch"


@pytest.mark.parametrize(
    ("ctype", "body"),
    [
        ("application/json", b"{}"),
        ("multipart/form-data", b"--x\r\n"),
        ("multipart/form-data; boundary=x", b"no boundary here"),
        (
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="a"\r\n\r\nunterminated',
        ),
        ("multipart/form-data; boundary=x", b"--x\r\nContent-Type: text/plain\r\n\r\nv\r\n--x--\r\n"),
    ],
)
def test_malformed_bodies_are_refused(ctype: str, body: bytes):
    with pytest.raises(MultipartError):
        parse_form(ctype, body)
