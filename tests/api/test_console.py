"""The console's sessions and guards over HTTP (in process): the cookie's contract, CSRF on every
state change, what a missing session gets, and the page headers. The pages themselves are tested in
a real browser (tests/browser)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator

import httpx
import pytest
from redis.asyncio import Redis

from api.app import create_app
from config.settings import ConsoleSettings, Settings
from scheduler.ledger import keys
from tests.api.harness import asgi
from tests.conftest import make_settings


@pytest.fixture
async def client(redis: Redis, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi(create_app(settings, redis=redis)) as http:
        yield http


async def sign_in(client: httpx.AsyncClient, key: str) -> httpx.Response:
    form = await client.get("/ui/login")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert token is not None
    return await client.post("/ui/login", data={"key": key, "csrf": token.group(1)})


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None
    return found.group(1)


async def test_sign_in_sets_an_httponly_samesite_cookie_and_stores_no_key(client, redis, settings):
    answer = await sign_in(client, "admin-key")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/lanes"
    (cookie,) = [c for c in answer.headers.get_list("set-cookie") if c.startswith("batchshift_session=")]
    attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/ui"} <= attributes
    assert "secure" not in attributes  # plain HTTP and console.secure_cookie off
    token = cookie.split(";")[0].split("=", 1)[1]
    stored = keys.console_session(hashlib.sha256(token.encode()).hexdigest())
    assert await redis.exists(stored)
    assert 0 < await redis.ttl(stored) <= settings.console.session_ttl_s
    assert not await redis.exists(keys.console_session(token))  # the cookie's value is not the key
    dump = b"".join(k + v for k, v in (await redis.hgetall(stored)).items())
    assert b"admin-key" not in dump


async def test_secure_cookie_when_a_proxy_ends_tls(redis, redis_url):
    settings = make_settings(redis_url, console=ConsoleSettings(secure_cookie=True))
    async with asgi(create_app(settings, redis=redis)) as client:
        form = await client.get("/ui/login")
        login_cookie = form.cookies["batchshift_login"]  # Secure: the client keeps it for HTTPS only
        answer = await client.post(
            "/ui/login",
            data={"key": "acme-key", "csrf": csrf_of(form)},
            headers={"cookie": f"batchshift_login={login_cookie}"},
        )
    assert answer.status_code == 303
    (cookie,) = [c for c in answer.headers.get_list("set-cookie") if c.startswith("batchshift_session=")]
    assert "secure" in {part.strip().lower() for part in cookie.split(";")}


async def test_a_wrong_key_opens_no_session_and_is_not_echoed(client, redis):
    answer = await sign_in(client, "guess-key")
    assert answer.status_code == 401
    assert "guess-key" not in answer.text
    assert await redis.keys("bs:console:session:*") == []


async def test_sign_in_without_the_forms_token_is_refused(client, redis):
    answer = await client.post("/ui/login", data={"key": "admin-key", "csrf": "made-up"})
    assert answer.status_code == 403
    assert await redis.keys("bs:console:session:*") == []


@pytest.mark.parametrize(
    ("path", "data"),
    [
        ("/ui/logout", {}),
        ("/ui/deliveries/replay", {"id": "wh_job_x"}),
    ],
)
async def test_state_changes_without_the_sessions_csrf_token_are_refused(client, redis, path, data):
    await sign_in(client, "admin-key")
    before = await redis.keys("bs:*")
    answer = await client.post(path, data={**data, "csrf": "forged"})
    assert answer.status_code == 403
    assert answer.json()["error"]["field"] == "csrf"
    assert sorted(await redis.keys("bs:*")) == sorted(before)  # the session is still there, nothing changed


async def test_sign_out_ends_the_session_server_side(client, redis):
    await sign_in(client, "admin-key")
    page = await client.get("/ui/lanes")
    assert page.status_code == 200
    answer = await client.post("/ui/logout", data={"csrf": csrf_of(page)})
    assert answer.status_code == 303
    assert await redis.keys("bs:console:session:*") == []
    assert (await client.get("/ui/lanes")).headers["location"] == "/ui/login"


async def test_without_a_session_pages_redirect_and_data_answers_401(client):
    page = await client.get("/ui/jobs")
    assert page.status_code == 303
    assert page.headers["location"] == "/ui/login"
    data = await client.get("/ui/data/lanes")
    assert data.status_code == 401
    assert data.json()["error"]["field"] == "session"
    client.cookies.set("batchshift_session", "not-a-session", path="/ui")
    assert (await client.get("/ui/jobs")).status_code == 303


async def test_a_tenants_session_cannot_change_anything(client, redis):
    await sign_in(client, "acme-key")
    page = await client.get("/ui/jobs")
    csrf = csrf_of(page)  # the sign-out form's token: valid, yet the role refuses
    for path in ("/ui/deliveries/replay", "/ui/audits"):
        answer = await client.post(path, data={"csrf": csrf, "id": "wh_job_x"})
        assert answer.status_code == 403, path
    assert await redis.zcard(keys.CONSOLE_AUDITS) == 0


async def test_pages_carry_a_strict_content_security_policy(client):
    await sign_in(client, "admin-key")
    page = await client.get("/ui/savings")
    assert page.status_code == 200
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert "<script>" not in page.text  # no inline script: the policy would block it
    assert page.headers["cache-control"] == "no-store"


async def test_assets_are_served_from_the_package(client):
    css = await client.get("/ui/static/console.css")
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")
    assert (await client.get("/ui/static/console.js")).headers["content-type"].startswith("text/javascript")
    assert (await client.get("/ui/static/..%2Fsessions.py")).status_code == 404


async def test_a_tenants_job_list_pages_on_to_older_jobs(client):
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    jobs = {"jobs": [{"provider": "openai", "body": body, "deadline_in": 3600} for _ in range(55)]}
    created = await client.post("/v1/jobs/bulk", json=jobs, headers={"authorization": "Bearer acme-key"})
    ids = [entry["job"]["id"] for entry in created.json()["results"]]
    await sign_in(client, "acme-key")
    first = await client.get("/ui/jobs")
    shown = re.findall(r'href="/ui/jobs/(job_[A-Za-z0-9]+)"', first.text)
    assert shown == sorted(ids, reverse=True)[:50]
    older = re.search(r'href="/ui/jobs\?([^"]+)" id="older-jobs"', first.text)
    assert older is not None
    second = await client.get(f"/ui/jobs?{older.group(1).replace('&amp;', '&')}")
    assert re.findall(r'href="/ui/jobs/(job_[A-Za-z0-9]+)"', second.text) == sorted(ids, reverse=True)[50:]
    assert 'id="older-jobs"' not in second.text


async def test_only_the_newest_audit_reports_are_kept(redis, redis_url):
    settings = make_settings(redis_url, console=ConsoleSettings(audit_max_reports=2))
    async with asgi(create_app(settings, redis=redis)) as client:
        await sign_in(client, "admin-key")
        csrf = csrf_of(await client.get("/ui/audits"))
        opened = []
        for n in range(3):
            report = {"report": (f"audit-{n}.json", b'{"features": [], "total": {}}', "application/json")}
            answer = await client.post("/ui/audits", data={"csrf": csrf}, files=report)
            assert answer.status_code == 303
            opened.append(answer.headers["location"].rsplit("/", 1)[1])
        listing = await client.get("/ui/audits")
        assert "audit-0.json" not in listing.text
        assert "audit-1.json" in listing.text
        assert "audit-2.json" in listing.text
        assert not await redis.exists(keys.console_audit(opened[0]))
        assert (await client.get(f"/ui/audits/{opened[0]}")).status_code == 404
        report_file = await client.get(f"/ui/audits/{opened[2]}/file")
        assert report_file.headers["content-type"] == "application/json"
        assert report_file.headers["content-security-policy"].startswith("sandbox")
