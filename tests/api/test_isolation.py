"""Tenants see, list and cancel only their own jobs; keys are required; the admin key is not a tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI
from redis.asyncio import Redis

from api import auth
from api.errors import install_error_handlers
from config.settings import Settings
from scheduler.ledger.ledger import Ledger
from tests.api.harness import ACME, ADMIN, GLOBEX, asgi, asgi_client

JOB = {"provider": "openai", "body": {"model": "m"}}
UNKNOWN_ID = "job_00000000000000000000000000"


async def test_another_tenants_job_looks_like_no_job(settings: Settings, redis: Redis):
    async with asgi_client(settings, redis) as api:
        theirs = (await api.post("/v1/jobs", json=JOB, headers=GLOBEX)).json()["id"]
        mine = (await api.post("/v1/jobs", json=JOB, headers=ACME)).json()["id"]
        got = await api.get(f"/v1/jobs/{theirs}", headers=ACME)
        polled = await api.get(f"/v1/jobs/{theirs}", params={"wait": 0.1}, headers=ACME)
        missing = await api.get(f"/v1/jobs/{UNKNOWN_ID}", headers=ACME)
        cancel = await api.post(f"/v1/jobs/{theirs}/cancel", headers=ACME)
        listed = (await api.get("/v1/jobs", headers=ACME)).json()
    assert got.status_code == polled.status_code == missing.status_code == cancel.status_code == 404
    assert got.json()["error"]["type"] == missing.json()["error"]["type"] == "not_found"
    assert [v["id"] for v in listed["data"]] == [mine]
    record = await Ledger(redis).get(theirs)
    assert record is not None
    assert record.state == "queued"


async def test_same_idempotency_key_in_two_tenants_makes_two_jobs(settings: Settings, redis: Redis):
    async with asgi_client(settings, redis) as api:
        a = await api.post("/v1/jobs", json=JOB, headers={**ACME, "Idempotency-Key": "k"})
        b = await api.post("/v1/jobs", json=JOB, headers={**GLOBEX, "Idempotency-Key": "k"})
    assert a.json()["id"] != b.json()["id"]


async def test_missing_or_unknown_key_is_401(settings: Settings, redis: Redis):
    async with asgi_client(settings, redis) as api:
        for headers in (
            {"authorization": ""},
            {"authorization": "Bearer nope"},
            {"authorization": "Basic acme-key"},
        ):
            for method, path in (
                ("POST", "/v1/jobs"),
                ("GET", "/v1/jobs"),
                ("GET", f"/v1/jobs/{UNKNOWN_ID}"),
            ):
                response = await api.request(method, path, json=JOB, headers=headers)
                assert response.status_code == 401, (headers, path)
                assert response.json()["error"]["type"] == "unauthorized"
                assert response.headers["www-authenticate"] == "Bearer"


async def test_admin_key_is_not_a_tenant(settings: Settings, redis: Redis):
    async with asgi_client(settings, redis) as api:
        response = await api.post("/v1/jobs", json=JOB, headers=ADMIN)
    assert response.status_code == 403


async def test_a_refused_key_stores_nothing(settings: Settings, redis: Redis):
    async with asgi_client(settings, redis) as api:
        await api.post("/v1/jobs", json=JOB, headers={"authorization": "Bearer nope"})
        await api.post("/v1/jobs/bulk", json={"jobs": [JOB]}, headers={"authorization": "Bearer nope"})
    assert await redis.keys("bs:*") == []


async def test_health_needs_no_key(settings: Settings, redis: Redis):
    async with asgi_client(settings, redis, headers={}) as api:
        assert (await api.get("/healthz")).status_code == 200
        assert (await api.get("/readyz")).status_code == 200


async def test_auth_dependencies(settings: Settings):
    """auth.admin refuses tenant keys (403) and takes the admin key; tenant_or_admin tells them apart."""
    app = FastAPI()
    app.state.settings = settings
    install_error_handlers(app)

    @app.get("/admin", dependencies=[Depends(auth.admin)])
    async def admin_only() -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/who")
    async def who(caller: Annotated[auth.Caller, Depends(auth.tenant_or_admin)]) -> dict[str, object]:
        return {"tenant": caller.tenant, "admin": caller.admin}

    async with asgi(app) as api:
        assert (await api.get("/admin", headers=ADMIN)).status_code == 200
        assert (await api.get("/admin", headers=ACME)).status_code == 403
        assert (await api.get("/admin")).status_code == 401
        assert (await api.get("/who", headers=ACME)).json() == {"tenant": "acme", "admin": False}
        assert (await api.get("/who", headers=ADMIN)).json() == {"tenant": None, "admin": True}
