"""The batch builder: provider formats, limits, spooling to disk."""

from __future__ import annotations

import orjson
import pytest

from workers import errors
from workers.providers import batch_input
from workers.providers.base import BatchLine

CHAT = "/v1/chat/completions"


def line(i: int, body: bytes | None = None) -> BatchLine:
    return BatchLine(
        f"job-{i}", body or orjson.dumps({"model": "m", "messages": [{"role": "user", "content": str(i)}]})
    )


async def read_all(spooled: batch_input.BatchInput) -> bytes:
    return b"".join([chunk async for chunk in spooled.chunks()])


async def test_openai_input_is_jsonl_with_bodies_copied_verbatim() -> None:
    body = b'{"model":"m","messages":[],"temperature":0.10}'
    spooled = await batch_input.spool(
        [line(1, body), line(2)],
        batch_input.OPENAI_FORMAT,
        endpoint=CHAT,
        request_limit=10,
        byte_limit=10_000,
    )
    with spooled:
        content = await read_all(spooled)
    assert len(content) == spooled.nbytes
    first, second = content.splitlines()
    assert orjson.loads(first) == {
        "custom_id": "job-1",
        "method": "POST",
        "url": CHAT,
        "body": orjson.loads(body),
    }
    assert b'"temperature":0.10' in first  # not re-encoded
    assert orjson.loads(second)["custom_id"] == "job-2"


async def test_anthropic_input_is_one_requests_object() -> None:
    spooled = await batch_input.spool(
        [line(1), line(2)],
        batch_input.ANTHROPIC_FORMAT,
        endpoint="/v1/messages",
        request_limit=10,
        byte_limit=10_000,
    )
    with spooled:
        doc = orjson.loads(await read_all(spooled))
        assert len(await read_all(spooled)) == spooled.nbytes  # re-readable for retries
    assert [r["custom_id"] for r in doc["requests"]] == ["job-1", "job-2"]
    assert doc["requests"][0]["params"]["model"] == "m"


async def test_a_pretty_printed_body_is_compacted_to_stay_one_line() -> None:
    body = b'{\n  "model": "m",\n  "messages": []\n}'
    spooled = await batch_input.spool(
        [line(1, body)], batch_input.OPENAI_FORMAT, endpoint=CHAT, request_limit=10, byte_limit=10_000
    )
    with spooled:
        content = await read_all(spooled)
    assert content.count(b"\n") == 1
    assert orjson.loads(content)["body"] == {"model": "m", "messages": []}


@pytest.mark.parametrize("body", [b"[1, 2]", b"not json", b""])
async def test_bodies_that_are_not_json_objects_are_refused(body: bytes) -> None:
    with pytest.raises(errors.InvalidBatchInput):
        await batch_input.spool(
            [BatchLine("a", body)], batch_input.OPENAI_FORMAT, endpoint=CHAT, request_limit=1, byte_limit=100
        )


async def test_limits_are_enforced_while_spooling() -> None:
    with pytest.raises(errors.BatchTooLarge) as too_many:
        await batch_input.spool(
            [line(i) for i in range(3)],
            batch_input.OPENAI_FORMAT,
            endpoint=CHAT,
            request_limit=2,
            byte_limit=10**6,
        )
    assert too_many.value.requests == 3
    with pytest.raises(errors.BatchTooLarge):
        await batch_input.spool(
            [line(1)], batch_input.OPENAI_FORMAT, endpoint=CHAT, request_limit=9, byte_limit=50
        )
    with pytest.raises(errors.InvalidBatchInput):
        await batch_input.spool(
            [], batch_input.OPENAI_FORMAT, endpoint=CHAT, request_limit=9, byte_limit=10**6
        )


def test_split_fills_each_batch_up_to_the_byte_limit_exactly() -> None:
    lines = [line(i) for i in range(7)]
    fmt = batch_input.ANTHROPIC_FORMAT
    size = len(fmt.encode(lines[0], "/v1/messages"))
    limit = len(fmt.head) + len(fmt.tail) + 3 * size + 2 * len(fmt.separator)  # exactly three lines
    groups = list(batch_input.split(lines, fmt, endpoint="/v1/messages", request_limit=100, byte_limit=limit))
    assert [len(g) for g in groups] == [3, 3, 1]


async def test_every_split_group_spools_within_the_limits() -> None:
    lines = [line(i, orjson.dumps({"model": "m", "pad": "x" * (i * 37 % 300)})) for i in range(60)]
    for fmt in (batch_input.OPENAI_FORMAT, batch_input.ANTHROPIC_FORMAT):
        groups = list(batch_input.split(lines, fmt, endpoint=CHAT, request_limit=25, byte_limit=4000))
        assert [x.custom_id for g in groups for x in g] == [x.custom_id for x in lines]
        for group in groups:
            spooled = await batch_input.spool(group, fmt, endpoint=CHAT, request_limit=25, byte_limit=4000)
            with spooled:
                assert spooled.nbytes <= 4000
                assert len(await read_all(spooled)) == spooled.nbytes


def test_a_line_bigger_than_any_batch_is_refused_by_split() -> None:
    with pytest.raises(errors.BatchTooLarge):
        list(
            batch_input.split(
                [line(1)], batch_input.OPENAI_FORMAT, endpoint=CHAT, request_limit=5, byte_limit=20
            )
        )
