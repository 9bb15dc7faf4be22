"""The emulator's prompt-caching model, driven by the official SDKs on a held emulator clock.

OpenAI batch lines hit a prefix carried by one of the ``cache_window`` lines before them in the same
input (with the same ``prompt_cache_key``); Anthropic entries stay warm for their ``cache_control``
TTL on the emulator's clock (:mod:`emulator.prompt_cache`).
"""

from __future__ import annotations

import json
import time

import anthropic
import openai
import pytest

from emulator.server import EmulatorControl
from tests.emulator.sdk_polling import poll_until

OPENAI_MODEL = "gpt-4o-mini"
ANTHROPIC_MODEL = "claude-haiku-4-5"
DOC = {name: f"Document {name}. " + "x" * 5_000 for name in "ABC"}  # 1,253 tokens by the emulator's count
CACHED = 1_253 // 128 * 128  # OpenAI reports 128-token increments


@pytest.fixture
def clock(emulator: EmulatorControl) -> list[float]:
    """The emulator's clock, held; tests move it by setting ``clock[0]`` through :func:`at`."""
    now = [float(int(time.time()))]
    emulator.set_clock(now[0])
    return now


def at(emulator: EmulatorControl, clock: list[float], seconds: float) -> None:
    clock[0] += seconds
    emulator.set_clock(clock[0])


def _openai_batch(
    sdk: openai.OpenAI, emulator: EmulatorControl, clock: list[float], lines: list[tuple[str, str | None]]
) -> list[int]:
    """Run one batch of (document, prompt_cache_key) lines; the cached tokens of each, in input order."""
    content = "".join(
        json.dumps(
            {
                "custom_id": f"line-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": OPENAI_MODEL,
                    "messages": [
                        {"role": "system", "content": DOC[doc]},
                        {"role": "user", "content": f"question {i}"},
                    ],
                    **({"prompt_cache_key": key} if key else {}),
                },
            }
        )
        + "\n"
        for i, (doc, key) in enumerate(lines)
    )
    uploaded = sdk.files.create(file=("input.jsonl", content.encode()), purpose="batch")
    batch = sdk.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    at(emulator, clock, 60)
    ended = poll_until(lambda: sdk.batches.retrieve(batch.id), lambda b: b.status == "completed")
    assert ended.output_file_id is not None
    results = [json.loads(line) for line in sdk.files.content(ended.output_file_id).text.splitlines()]
    by_id = {
        r["custom_id"]: r["response"]["body"]["usage"]["prompt_tokens_details"]["cached_tokens"]
        for r in results
    }
    return [by_id[f"line-{i}"] for i in range(len(lines))]


def test_openai_batch_lines_hit_a_prefix_within_the_window(
    emulator: EmulatorControl, clock: list[float]
) -> None:
    emulator.configure(cache_window=2)
    sdk = openai.OpenAI(base_url=emulator.url + "/v1", api_key="sk-test", max_retries=0)
    lines: list[tuple[str, str | None]] = [
        ("A", None),
        ("A", None),
        ("B", None),
        ("C", None),
        ("A", None),
        ("A", None),
    ]
    assert _openai_batch(sdk, emulator, clock, lines) == [0, CACHED, 0, 0, 0, CACHED]
    # Nothing carries over to the next batch.
    assert _openai_batch(sdk, emulator, clock, [("A", None), ("A", None)]) == [0, CACHED]


def test_openai_prompt_cache_key_is_part_of_the_prefix(emulator: EmulatorControl, clock: list[float]) -> None:
    sdk = openai.OpenAI(base_url=emulator.url + "/v1", api_key="sk-test", max_retries=0)
    lines: list[tuple[str, str | None]] = [("A", "k1"), ("A", "k2"), ("A", "k1"), ("A", None)]
    assert _openai_batch(sdk, emulator, clock, lines) == [0, 0, CACHED, 0]


def test_openai_no_window_no_hits(emulator: EmulatorControl, clock: list[float]) -> None:
    emulator.configure(cache_window=0)
    sdk = openai.OpenAI(base_url=emulator.url + "/v1", api_key="sk-test", max_retries=0)
    assert _openai_batch(sdk, emulator, clock, [("A", None)] * 3) == [0, 0, 0]


def test_cache_window_must_be_a_whole_number(emulator: EmulatorControl) -> None:
    with pytest.raises(Exception, match="400"):
        emulator.configure(cache_window=1.5)


def _message(sdk: anthropic.Anthropic, ttl: str | None) -> anthropic.types.Usage:
    control: dict[str, str] = {"type": "ephemeral", **({"ttl": ttl} if ttl else {})}
    system = [{"type": "text", "text": DOC["A"], "cache_control": control}]
    message = sdk.messages.create(
        model=ANTHROPIC_MODEL,
        max_tokens=4,
        system=system,  # type: ignore[arg-type]
        messages=[{"role": "user", "content": "summarise"}],
    )
    return message.usage


def test_anthropic_entries_stay_warm_for_their_ttl(emulator: EmulatorControl, clock: list[float]) -> None:
    sdk = anthropic.Anthropic(base_url=emulator.url, api_key="sk-ant-test", max_retries=0)
    first = _message(sdk, None)
    assert first.cache_creation_input_tokens == 1_253
    assert first.cache_creation is not None
    assert first.cache_creation.ephemeral_5m_input_tokens == 1_253
    at(emulator, clock, 240)
    assert _message(sdk, None).cache_read_input_tokens == 1_253  # within 5 minutes, and refreshed
    at(emulator, clock, 240)
    assert _message(sdk, None).cache_read_input_tokens == 1_253
    at(emulator, clock, 301)
    assert _message(sdk, None).cache_creation_input_tokens == 1_253  # expired: written again

    emulator.reset()
    emulator.set_clock(clock[0])
    hour = _message(sdk, "1h")
    assert hour.cache_creation is not None
    assert hour.cache_creation.ephemeral_1h_input_tokens == 1_253
    at(emulator, clock, 3_000)
    assert _message(sdk, "1h").cache_read_input_tokens == 1_253


def test_anthropic_batch_lines_share_an_entry(emulator: EmulatorControl, clock: list[float]) -> None:
    sdk = anthropic.Anthropic(base_url=emulator.url, api_key="sk-ant-test", max_retries=0)
    system = [{"type": "text", "text": DOC["A"], "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    requests = [
        {
            "custom_id": f"job-{i}",
            "params": {
                "model": ANTHROPIC_MODEL,
                "max_tokens": 4,
                "system": system,
                "messages": [{"role": "user", "content": f"question {i}"}],
            },
        }
        for i in range(3)
    ]
    created = sdk.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    at(emulator, clock, 60)
    poll_until(lambda: sdk.messages.batches.retrieve(created.id), lambda b: b.processing_status == "ended")
    usages = [r.result.message.usage for r in sdk.messages.batches.results(created.id)]  # type: ignore[union-attr]
    assert sorted(u.cache_creation_input_tokens or 0 for u in usages) == [0, 0, 1_253]
    assert sorted(u.cache_read_input_tokens or 0 for u in usages) == [0, 1_253, 1_253]
    # A batch half an hour later reads the one-hour entry.
    at(emulator, clock, 1_800)
    again = sdk.messages.batches.create(requests=requests[:1])  # type: ignore[arg-type]
    at(emulator, clock, 60)
    poll_until(lambda: sdk.messages.batches.retrieve(again.id), lambda b: b.processing_status == "ended")
    (result,) = list(sdk.messages.batches.results(again.id))
    assert result.result.message.usage.cache_read_input_tokens == 1_253  # type: ignore[union-attr]


def test_uses_recorded_out_of_order_stay_consistent() -> None:
    """Results are built when first read, so a batch that ran earlier may be built later."""
    from emulator.prompt_cache import TimedCache

    cache = TimedCache()
    assert cache.use(b"k", 1_000.0, 300) is False  # written at 1,000
    assert cache.use(b"k", 900.0, 300) is False  # a line that ran before: it wrote the entry
    assert cache.use(b"k", 950.0, 300) is True
    assert cache.use(b"k", 1_250.0, 300) is True
    assert cache.use(b"k", 1_549.0, 300) is True  # within 300 s of the last use (1,250)
    assert cache.use(b"k", 1_900.0, 300) is False  # idle past the TTL: written again


def test_each_api_key_has_its_own_cache(emulator: EmulatorControl, clock: list[float]) -> None:
    ours = anthropic.Anthropic(base_url=emulator.url, api_key="sk-ant-ours", max_retries=0)
    theirs = anthropic.Anthropic(base_url=emulator.url, api_key="sk-ant-theirs", max_retries=0)
    assert _message(ours, None).cache_creation_input_tokens == 1_253
    assert _message(theirs, None).cache_creation_input_tokens == 1_253
    assert _message(ours, None).cache_read_input_tokens == 1_253
