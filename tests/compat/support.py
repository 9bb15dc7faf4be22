"""The compatible endpoints end to end: our real API in process (over ASGI, its lifespan run), driven
by the official ``openai`` and ``anthropic`` SDKs, in front of the SLO pipeline of
:mod:`tests.test_slo_e2e` (scheduler tick, arq worker, emulator) on one virtual clock."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import anthropic
import httpx
import httpx2
import openai
from fastapi import FastAPI
from redis.asyncio import Redis

from api.app import create_app
from config.settings import ProviderSettings, Settings
from tests.test_slo_e2e import FAST_HTTP, Pipeline, e2e_settings

OPENAI_MODEL = "gpt-4o-mini"
ANTHROPIC_MODEL = "claude-haiku-4-5"
CHAT = "/v1/chat/completions"


def compat_settings(redis_url: str, emulator, pagerduty, **slo: object) -> Settings:
    """The SLO end-to-end settings with an Anthropic account beside the OpenAI one (same emulator)."""
    base = e2e_settings(redis_url, emulator, pagerduty, **slo)
    account = ProviderSettings(kind="anthropic", base_url=emulator.url, api_key="sk-ant-test", http=FAST_HTTP)
    return base.model_copy(update={"providers": {**base.providers, "anthropic": account}})


@contextlib.asynccontextmanager
async def compat_app(settings: Settings, redis: Redis, pipeline: Pipeline) -> AsyncIterator[FastAPI]:
    """Our API on the pipeline's Redis and virtual clock (``app.state.clock``), its lifespan running."""
    app = create_app(settings, redis=redis)
    async with app.router.lifespan_context(app):
        app.state.clock = pipeline.clock
        yield app


def _transport(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")


@contextlib.asynccontextmanager
async def openai_sdk(app: FastAPI, key: str = "acme-key") -> AsyncIterator[openai.AsyncOpenAI]:
    """The official SDK, ``base_url`` = batchshift, the tenant's key as its API key."""
    client = openai.AsyncOpenAI(
        base_url="http://api/v1", api_key=key, max_retries=0, http_client=_transport(app)
    )
    try:
        yield client
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def anthropic_sdk(app: FastAPI, key: str = "acme-key") -> AsyncIterator[anthropic.AsyncAnthropic]:
    # This SDK's HTTP stack is httpx2 (a fork of httpx), which has its own ASGI transport.
    http_client = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://api")
    client = anthropic.AsyncAnthropic(
        base_url="http://api", api_key=key, max_retries=0, http_client=http_client
    )
    try:
        yield client
    finally:
        await client.close()


def jsonl(custom_ids: list[str], model: str = OPENAI_MODEL, url: str = CHAT) -> bytes:
    """An OpenAI batch input file: one chat request per custom id."""
    lines = [
        {
            "custom_id": custom_id,
            "method": "POST",
            "url": url,
            "body": {"model": model, "messages": [{"role": "user", "content": f"question {custom_id}"}]},
        }
        for custom_id in custom_ids
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


async def step_until(pipeline: Pipeline, done: Callable[[], Awaitable[bool]], within_s: float) -> None:
    """Pipeline steps until ``done()``; fails if it does not hold within ``within_s`` virtual seconds."""
    await pipeline.run_until(done, within_s=within_s)


def provider_batch_creates(emulator) -> list[dict[str, object]]:
    """The batch creates the emulator received (OpenAI's and Anthropic's)."""
    return [
        r
        for r in emulator.requests()
        if r["method"] == "POST" and r["path"] in ("/v1/batches", "/v1/messages/batches")
    ]
