"""Gemini jobs at the API: the contract ``{"provider", "endpoint": "generateContent", "body": {"model",
"contents"}}``, its lane, and the model catalogue the pricing file gives the gemini kind."""

from __future__ import annotations

from redis.asyncio import Redis

from config.settings import ProviderSettings
from scheduler.ledger import keys
from tests.api.harness import asgi_client
from tests.conftest import make_settings

BODY = {"model": "gemini-2.5-flash", "contents": [{"role": "user", "parts": [{"text": "Summarise"}]}]}


def gemini_settings(redis_url: str):
    gemini = ProviderSettings(kind="gemini", base_url="http://127.0.0.1:9", api_key="gemini-key")
    return make_settings(redis_url, providers={"gemini": gemini})


async def test_a_gemini_job_is_queued_in_its_lane(redis_url: str, redis: Redis) -> None:
    async with asgi_client(gemini_settings(redis_url), redis) as api:
        response = await api.post(
            "/v1/jobs", json={"provider": "gemini", "endpoint": "generateContent", "body": BODY}
        )
        assert response.status_code == 202, response.text
        view = response.json()
        assert view["lane"] == "gemini:gemini-2.5-flash:generateContent"
        assert await redis.zscore(keys.lane_queue(view["lane"]), view["id"]) is not None
        # generateContent is the kind's default endpoint.
        default = await api.post("/v1/jobs", json={"provider": "gemini", "body": BODY})
        assert default.status_code == 202, default.text
        assert default.json()["endpoint"] == "generateContent"


async def test_gemini_refuses_other_endpoints_and_unpriced_models(redis_url: str, redis: Redis) -> None:
    async with asgi_client(gemini_settings(redis_url), redis) as api:
        wrong = await api.post(
            "/v1/jobs", json={"provider": "gemini", "endpoint": "/v1/chat/completions", "body": BODY}
        )
        assert wrong.status_code == 422
        assert wrong.json()["error"]["field"] == "endpoint"
        unknown = await api.post(
            "/v1/jobs", json={"provider": "gemini", "body": BODY | {"model": "gemini-9-ultra"}}
        )
        assert unknown.status_code == 422
        assert unknown.json()["error"]["field"] == "body.model"
