"""Decoding the providers' result files: bodies kept byte for byte, usage read, bad lines named."""

from __future__ import annotations

import pytest

from workers import errors
from workers.providers import anthropic, jsonl, openai

# As OpenAI writes them: spaces after separators, keys in its order, a float written its own way.
OPENAI_OK = (
    b'{"id": "batch_req_1", "custom_id": "job-1", "response": {"status_code": 200, "request_id": "req_1", '
    b'"body": {"id": "chatcmpl-1", "choices": [{"message": {"content": "a\\nb"}}], "score": 1.50, '
    b'"usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}}}, "error": null}'
)
OPENAI_BODY = (
    b'{"id": "chatcmpl-1", "choices": [{"message": {"content": "a\\nb"}}], "score": 1.50, '
    b'"usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}}'
)


def test_an_openai_success_keeps_the_body_exactly_as_sent_and_reads_its_usage():
    (line,) = openai.result_lines(OPENAI_OK)
    assert line.custom_id == "job-1"
    assert line.outcome == "succeeded"
    assert line.body == OPENAI_BODY
    assert line.usage == {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}


def test_openai_error_lines_are_typed_and_blank_lines_and_crlf_are_skipped():
    block = b"\r\n".join(
        [
            OPENAI_OK,
            b"",
            b'{"custom_id": "job-2", "response": {"status_code": 400, "body": {"error": '
            b'{"type": "invalid_request_error", "message": "bad", "code": "invalid_value"}}}, "error": null}',
            b'{"custom_id": "job-3", "response": {"status_code": 429, "body": {"error": {"message": "slow"}}}}',
            b'{"custom_id": "job-4", "response": null, "error": {"code": "batch_expired", "message": "late"}}',
            b'{"custom_id": "job-5", "response": null, "error": {"code": "other", "message": "no"}}',
        ]
    )
    lines = openai.result_lines(block)
    assert [(line.custom_id, line.outcome) for line in lines] == [
        ("job-1", "succeeded"),
        ("job-2", "failed"),
        ("job-3", "retriable"),
        ("job-4", "retriable"),
        ("job-5", "failed"),
    ]
    assert lines[1].error == {
        "type": "invalid_request_error",
        "message": "bad",
        "code": "invalid_value",
        "status": 400,
    }
    assert lines[3].error == {"type": "batch_expired", "message": "late", "code": "batch_expired"}


def test_an_anthropic_success_keeps_the_message_as_sent():
    message = b'{"id": "msg_1", "content": [{"type": "text", "text": "hi"}], "usage": {"input_tokens": 4, "output_tokens": 1}}'
    block = b'{"custom_id": "job-1", "result": {"type": "succeeded", "message": ' + message + b"}}\n"
    block += b'{"custom_id": "job-2", "result": {"type": "errored", "error": {"type": "error", "error": '
    block += b'{"type": "invalid_request_error", "message": "bad"}}}}\n'
    block += b'{"custom_id": "job-3", "result": {"type": "expired"}}'
    ok, bad, late = anthropic.result_lines(block)
    assert (ok.outcome, ok.body, ok.usage) == ("succeeded", message, {"input_tokens": 4, "output_tokens": 1})
    assert (bad.outcome, bad.error) == (
        "failed",
        {"type": "invalid_request_error", "message": "bad", "code": None},
    )
    assert late.outcome == "retriable"


@pytest.mark.parametrize(
    "block",
    [
        OPENAI_OK + b'\n{"custom_id": "job-2", "response": {',  # a cut line
        OPENAI_OK + b",\n" + OPENAI_OK,  # not JSONL
        b'{"custom_id": 7, "response": null}',  # custom_id not a string
        b'{"custom_id": "a", "response": {"status_code": 200, "body": null}}',  # a success without a body
        b'{"custom_id": "a", "response": {"status_code": 500, "body": "oops"}}',
    ],
)
def test_an_unreadable_openai_line_is_malformed(block: bytes):
    with pytest.raises(errors.MalformedResponse):
        openai.result_lines(block)


@pytest.mark.parametrize(
    "block",
    [
        b'{"custom_id": "a", "result": {"type": "surprise"}}',
        b'{"custom_id": "a"}',
        b'{"custom_id": "a", "result": {"type": "errored", "error": "text"}}',
    ],
)
def test_an_unreadable_anthropic_line_is_malformed(block: bytes):
    with pytest.raises(errors.MalformedResponse):
        anthropic.result_lines(block)


def test_lines_with_the_same_usage_share_one_decoded_usage_and_a_bad_usage_is_still_malformed():
    """A batch's lines repeat a few usages: each distinct one is decoded once (jsonl.usage_of), a
    missing usage is None, and a usage that is not an object is refused as before."""
    other = OPENAI_OK.replace(b'"job-1"', b'"job-2"').replace(
        b'"completion_tokens": 3', b'"completion_tokens": 4'
    )
    first, again, different = openai.result_lines(b"\n".join([OPENAI_OK, OPENAI_OK, other]))
    assert first.usage == {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
    assert again.usage is first.usage
    assert different.usage == {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 12}
    assert jsonl.usage_of(b'{"id": "x"}', "OpenAI") is None
    with pytest.raises(errors.MalformedResponse, match="unreadable OpenAI result body"):
        jsonl.usage_of(b'{"usage": 5}', "OpenAI")
