"""The emulator's multipart reader: what httpx and the official SDKs send, and malformed bodies."""

from __future__ import annotations

import httpx
import pytest

from emulator.multipart import BodyTooLarge, MultipartError, Pieces, parse_form, read_form


def encoded(files: dict, data: dict) -> tuple[str, bytes]:
    request = httpx.Request("POST", "http://x/", files=files, data=data)
    return request.headers["content-type"], request.read()


def cut(body: bytes, size: int) -> list[bytes]:
    return [body[start : start + size] for start in range(0, len(body), size)]


@pytest.mark.parametrize("piece_size", [1, 7, 64, 10**9])
def test_reads_a_file_and_a_field_as_httpx_encodes_them_however_the_body_arrives(piece_size: int):
    content = b'{"custom_id":"a"}\n' * 100 + b"--not-a-boundary\r\n"
    ctype, body = encoded({"file": ("in.jsonl", content, "application/jsonl")}, {"purpose": "batch"})
    form = parse_form(ctype, cut(body, piece_size))
    assert form["file"].filename == "in.jsonl"
    assert form["file"].content == content
    assert form["purpose"].filename is None
    assert form["purpose"].content == b"batch"


async def test_a_streamed_body_keeps_the_file_in_the_pieces_it_arrived_in():
    content = b'{"custom_id":"b"}\n' * 500
    ctype, body = encoded({"file": ("in.jsonl", content, "application/jsonl")}, {"purpose": "batch"})
    received = cut(body, 1000)

    async def chunks():
        for piece in received:
            yield piece

    form = await read_form(ctype, chunks(), max_bytes=len(body))
    assert form["file"].content == content
    inner = form["file"].pieces[1:-1]
    assert inner
    assert all(any(piece is chunk for chunk in received) for piece in inner)  # not copied


async def test_a_body_over_its_limit_is_refused_before_the_rest_is_read():
    read: list[int] = []

    async def endless():
        for number in range(1_000):
            read.append(number)
            yield b"x" * 100

    with pytest.raises(BodyTooLarge):
        await read_form("multipart/form-data; boundary=x", endless(), max_bytes=1_000)
    assert len(read) == 11  # the chunk that passed the limit is the last one read


def test_a_repeated_field_keeps_its_last_value():
    ctype = "multipart/form-data; boundary=x"
    body = b'--x\r\nContent-Disposition: form-data; name="a"\r\n\r\nfirst\r\n'
    body += b'--x\r\nContent-Disposition: form-data; name="a"\r\n\r\nlast\r\n--x--\r\n'
    assert parse_form(ctype, [body])["a"].content == b"last"


def test_find_sees_a_match_across_pieces_and_only_the_first():
    pieces = Pieces([b"aaXY", b"Zb", b"bXYZ"])
    assert pieces.find(b"XYZ", 0) == 2
    assert pieces.find(b"XYZ", 3) == 7
    assert pieces.find(b"XYZ", 8) == -1
    assert pieces.span(1, 9) == [b"aXY", b"Zb", b"bXY"]


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
        parse_form(ctype, cut(body, 3))
