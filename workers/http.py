"""Outbound HTTP: the one place that builds httpx clients, maps httpx and provider errors, and retries.

* :func:`build_client` makes the process's ``httpx.AsyncClient`` with every timeout explicit;
  :func:`build_guarded_client` makes the one for URLs tenants chose (SSRF-guarded, see
  :mod:`workers.ssrf`).
* :func:`translate_errors` turns httpx's exceptions into ours (always ``raise ... from exc``) and
  :func:`error_for_response` turns a provider's error answer (OpenAI's ``{"error": {...}}`` or
  Anthropic's ``{"type": "error", "error": {...}}``) into a :class:`~workers.errors.ProviderHTTPError`.
* :func:`retry_delay` is the one decision between "wait and retry" and "give up"; :func:`send` and
  :func:`open_stream` apply it. Only idempotent calls are retried after the request may have
  reached the provider; a non-idempotent call is retried only when the provider surely did nothing
  (connect failures, 429, 529).
* :func:`post_capped` is for URLs someone else chose or that answer for someone else (webhooks,
  alert channels): one deadline over the whole call, and at most a few KB of the answer read.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
import orjson
import structlog

from config.settings import HttpSettings
from scheduler import policy
from workers.errors import (
    AuthenticationError,
    ConnectionFailed,
    MalformedResponse,
    Overloaded,
    ProviderHTTPError,
    ProviderInvalidRequest,
    ProviderNotFound,
    RateLimited,
    ResponseTimeout,
    ServerError,
    WorkerError,
)
from workers.ssrf import guarded_transport

log = structlog.get_logger(__name__)

# Anthropic's "API-wide overload" status; OpenAI never sends it.
STATUS_OVERLOADED = 529
# Bytes of an error body we read before giving up on it; error bodies are small JSON objects.
MAX_ERROR_BODY = 64 * 1024
_rng = random.Random()  # jitter of provider call retries


def timeout_for(http: HttpSettings) -> httpx.Timeout:
    """The httpx timeouts of one provider's settings (adapters pass them on every request)."""
    return httpx.Timeout(
        connect=http.connect_timeout,
        read=http.read_timeout,
        write=http.write_timeout,
        pool=http.pool_timeout,
    )


def build_client(http: HttpSettings, *, max_connections: int = 100) -> httpx.AsyncClient:
    """The process's HTTP client for provider calls, with every timeout taken from settings."""
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    return httpx.AsyncClient(timeout=timeout_for(http), limits=limits, follow_redirects=False)


def build_guarded_client(
    allowlist: Iterable[str], *, timeout_s: float, max_connections: int, user_agent: str
) -> httpx.AsyncClient:
    """A process's client for URLs tenants chose: SSRF-guarded connections, no redirects, ``timeout_s``
    per operation (:func:`post_capped` adds the deadline over the whole call)."""
    return httpx.AsyncClient(
        transport=guarded_transport(allowlist, max_connections=max_connections),
        timeout=httpx.Timeout(timeout_s),
        follow_redirects=False,
        headers={"user-agent": user_agent},
    )


@contextmanager
def translate_errors(method: str, url: str) -> Iterator[None]:
    """Map httpx's transport errors raised inside the block to ours."""
    try:
        yield
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol) as exc:
        raise ConnectionFailed(method, url, f"{type(exc).__name__}: {exc}") from exc
    except httpx.DecodingError as exc:
        raise MalformedResponse(f"{method} {url}: undecodable body: {exc}") from exc
    except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
        # Read/write timeouts, dropped connections: the request may have taken effect.
        raise ResponseTimeout(method, url, f"{type(exc).__name__}: {exc}") from exc
    except httpx.TransportError as exc:  # proxy errors and anything httpx adds later
        raise ConnectionFailed(method, url, f"{type(exc).__name__}: {exc}") from exc


def retry_after(headers: httpx.Headers, now: float | None = None) -> float | None:
    """Seconds the provider asked us to wait: ``retry-after-ms``, or ``retry-after`` as seconds or a date."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def error_for_response(status: int, headers: httpx.Headers, body: bytes) -> ProviderHTTPError:
    """The error a provider's non-2xx answer stands for, typed by status, worded by the provider's body."""
    err_type, message = _error_fields(body)
    wait = retry_after(headers)
    cls: type[ProviderHTTPError]
    if status == 429:
        cls, retriable = RateLimited, True
    elif status == STATUS_OVERLOADED or (status == 503 and "overload" in (err_type + message).lower()):
        cls, retriable = Overloaded, True
    elif status >= 500 or status == 408:
        cls, retriable = ServerError, True
    elif status in (401, 403):
        cls, retriable = AuthenticationError, False
    elif status == 404:
        cls, retriable = ProviderNotFound, False
    else:
        cls, retriable = ProviderInvalidRequest, False
    should_retry = headers.get("x-should-retry")
    if should_retry in ("true", "false"):
        retriable = should_retry == "true"
    return cls(status, err_type or f"http_{status}", message or f"HTTP {status}", retriable, wait)


def _error_fields(body: bytes) -> tuple[str, str]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "", body[:200].decode("utf-8", "replace").strip()
    error = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(error, dict):
        # OpenAI: {"error": {"type", "code", "message"}}; Anthropic: {"type": "error", "error": {...}}.
        err_type = error.get("type") or error.get("code") or ""
        return str(err_type), str(error.get("message") or "")
    if isinstance(error, str):
        return "", error
    return "", ""


def retry_delay(exc: WorkerError, attempt: int, http: HttpSettings, *, idempotent: bool) -> float | None:
    """Seconds to wait before retry number ``attempt + 1``, or None to give up and raise ``exc``.

    Retries 429, 529, 5xx and transport errors with exponential backoff and equal jitter, or
    exactly the provider's ``retry-after`` when it sent one (a wait longer than ``backoff_max``
    is left to the caller's own scheduling). A non-idempotent call is retried only when the
    provider surely did nothing with it.
    """
    if attempt >= http.max_retries or not getattr(exc, "retriable", False):
        return None
    if not idempotent and not isinstance(exc, ConnectionFailed | RateLimited | Overloaded):
        return None
    if isinstance(exc, ProviderHTTPError) and exc.retry_after is not None:
        return exc.retry_after if exc.retry_after <= http.backoff_max else None
    if not isinstance(exc, ProviderHTTPError | ConnectionFailed | ResponseTimeout):
        return None
    return policy.backoff(attempt, http.backoff_base, http.backoff_max, _rng)


async def send(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    http: HttpSettings,
    idempotent: bool,
    max_retries: int | None = None,
    stream: bool = False,
    **request: Any,
) -> httpx.Response:
    """Send a request, retrying as :func:`retry_delay` says; raise our error for any non-2xx answer.

    ``request`` goes to ``client.build_request`` on every attempt, so file and iterable contents
    must be re-readable (the spooled batch input rewinds itself). With ``stream=True`` the body is
    left unread and the caller must close the response.
    """
    policy = http if max_retries is None else http.model_copy(update={"max_retries": max_retries})
    attempt = 0
    while True:
        try:
            return await _send_once(client, method, url, stream=stream, **request)
        except WorkerError as exc:
            delay = retry_delay(exc, attempt, policy, idempotent=idempotent)
            if delay is None:
                raise
            log.info(
                "provider.retry", method=method, url=url, attempt=attempt + 1, delay=delay, error=str(exc)
            )
            attempt += 1
            await asyncio.sleep(delay)


async def _send_once(
    client: httpx.AsyncClient, method: str, url: str, *, stream: bool, **request: Any
) -> httpx.Response:
    with translate_errors(method, url):
        response = await client.send(client.build_request(method, url, **request), stream=True)
        try:
            if response.is_success:
                if not stream:
                    await response.aread()
                return response
            body = b""
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) >= MAX_ERROR_BODY:
                    break
        finally:
            if not stream or not response.is_success:
                await response.aclose()
    raise error_for_response(response.status_code, response.headers, body)


@asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient, method: str, url: str, *, http: HttpSettings, **request: Any
) -> AsyncIterator[httpx.Response]:
    """An idempotent streamed GET-like call: retried until it answers 2xx, then closed on exit."""
    response = await send(client, method, url, http=http, idempotent=True, stream=True, **request)
    try:
        yield response
    finally:
        await response.aclose()


async def iter_line_blocks(response: httpx.Response) -> AsyncIterator[bytes]:
    """A streamed JSONL body as blocks of whole lines, a received chunk's worth at a time.

    Blocks, not single lines, so a caller decoding 50,000 lines pays the async hand-off and the
    decoder call per chunk, not per line; a partial line waits for the next chunk, so memory
    holds one chunk and one line.
    """
    method, url = response.request.method, str(response.request.url)
    pending = b""
    with translate_errors(method, url):
        async for chunk in response.aiter_bytes():
            end = chunk.rfind(b"\n")
            if end < 0:
                pending += chunk
                continue
            yield b"".join((pending, memoryview(chunk)[:end]))
            pending = chunk[end + 1 :]
    if pending.strip():
        yield pending


class CappedResponse:
    """An answer read by :func:`post_capped` or the webhook client: its status, headers and at most
    ``max_body`` bytes of body.

    Headers may be given as raw ``(name, value)`` pairs: they become :class:`httpx.Headers` only when
    read, since a delivered webhook's answer headers never are (only a failed one's ``retry-after``).
    """

    __slots__ = ("_headers", "body", "status_code", "truncated")

    def __init__(
        self,
        status_code: int,
        headers: httpx.Headers | list[tuple[bytes, bytes]],
        body: bytes,
        truncated: bool,  # the receiver sent more than was read
    ) -> None:
        self.status_code = status_code
        self._headers = headers
        self.body = body
        self.truncated = truncated

    @property
    def headers(self) -> httpx.Headers:
        headers = self._headers
        if not isinstance(headers, httpx.Headers):
            headers = self._headers = httpx.Headers(headers)
        return headers

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    def __repr__(self) -> str:
        return (
            f"CappedResponse(status_code={self.status_code!r}, headers={self.headers!r}, "
            f"body={self.body!r}, truncated={self.truncated!r})"
        )


async def post_capped(
    client: httpx.AsyncClient,
    url: str,
    *,
    content: bytes,
    headers: dict[str, str],
    deadline_s: float,
    max_body: int,
) -> CappedResponse:
    """POST to a URL someone else chose, costing at most ``deadline_s`` seconds and ``max_body`` bytes.

    The deadline covers the whole send (connect, request, answer head, body), not each read, so a
    receiver trickling a byte at a time cannot hold the call open. The answer is streamed and at
    most ``max_body`` raw bytes of it are kept (raw: a compressed body is never inflated); the
    connection is then closed unread. Raises :class:`ResponseTimeout` when the deadline passes and
    the errors of :func:`translate_errors` for transport failures.
    """
    try:
        async with asyncio.timeout(deadline_s):
            with translate_errors("POST", url):
                request = client.build_request("POST", url, content=content, headers=headers)
                response = await client.send(request, stream=True)
                try:
                    body, truncated = await _read_capped(response, max_body)
                finally:
                    await response.aclose()
    except TimeoutError as exc:
        raise ResponseTimeout(
            "POST", url, f"no complete answer within the {deadline_s:g} s deadline"
        ) from exc
    return CappedResponse(response.status_code, response.headers, body, truncated)


async def _read_capped(response: httpx.Response, max_body: int) -> tuple[bytes, bool]:
    parts: list[bytes] = []
    kept = 0
    async for chunk in response.aiter_raw():
        room = max_body - kept
        if len(chunk) > room:
            parts.append(chunk[:room])
            return b"".join(parts), True
        parts.append(chunk)
        kept += len(chunk)
    return b"".join(parts), False
