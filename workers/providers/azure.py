"""The adapter for Azure OpenAI Global Batch: OpenAI's batch format on an Azure resource.

Everything but addressing is OpenAI's (:class:`~workers.providers.openai.OpenAIAdapter`): the
same files, batch objects and result lines. What Azure does its own way: ``base_url`` is the
resource's ``https://RES.openai.azure.com/openai``; with ``api_version`` every call carries
``?api-version=`` and a sync call goes to ``/deployments/{deployment}/chat/completions``,
without it the v1 API (``base_url + /v1``) takes the deployment in ``model``. The key goes in
an ``api-key`` header (an Entra token with ``auth_header = "Authorization"``). Batch lines and
the create name endpoints as Azure documents them, without ``/v1`` (``/chat/completions``).

Azure's limits are handled where OpenAI's are: a create refused with ``token_limit_exceeded``
(Azure fails it fast as a ``failed`` batch) sends its jobs back and holds the lane
(:mod:`workers.tasks.refusals`); Azure never expires a batch, so one running past its completion
window plus ``scheduler.overdue_grace_s`` is cancelled and its jobs move on
(:func:`scheduler.policy.overdue`); empty-string file ids read as none (:func:`openai.batch_info`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from config.settings import ProviderSettings
from workers.providers.account import ProviderAccount, parse_object
from workers.providers.base import SyncResult
from workers.providers.openai import API_VERSION_PREFIX, OpenAIAdapter

V1_PATH = "/v1"  # the v1 API's path below the resource's /openai


class AzureAccount(ProviderAccount):
    """An Azure resource: the base for its API dialect, and ``api-version`` on every call."""

    def __init__(self, name: str, settings: ProviderSettings, client: httpx.AsyncClient) -> None:
        super().__init__(name, settings, client, default_auth_header=AzureAdapter.default_auth_header)
        if settings.api_version is None:
            self.base = settings.base_url + V1_PATH + settings.path_prefix
        self.params = {"api-version": settings.api_version} if settings.api_version else {}

    def _with_version(self, request: dict[str, Any]) -> dict[str, Any]:
        request["params"] = {**self.params, **(request.get("params") or {})}
        return request

    async def call(self, method: str, path: str, **request: Any) -> httpx.Response:
        return await super().call(method, path, **self._with_version(request))

    @asynccontextmanager
    async def stream(self, path: str, **request: Any) -> AsyncIterator[httpx.Response]:
        async with super().stream(path, **self._with_version(request)) as response:
            yield response


class AzureAdapter(OpenAIAdapter):
    """One Azure OpenAI resource's Global Batch deployments."""

    kind = "azure_openai"
    default_auth_header = "api-key"

    def __init__(self, name: str, settings: ProviderSettings, client: httpx.AsyncClient) -> None:
        super().__init__(name, settings, client)
        self.account = AzureAccount(name, settings, client)

    def batch_endpoint(self, endpoint: str) -> str:
        """Azure's spelling: ``/chat/completions``."""
        return endpoint.removeprefix(API_VERSION_PREFIX)

    def sync_path(self, endpoint: str) -> str:
        return endpoint.removeprefix(API_VERSION_PREFIX)

    def upload_form(self) -> dict[str, str]:
        form = super().upload_form()
        expires_s = self.account.settings.input_file_expires_s
        if expires_s is not None:
            form |= {"expires_after[anchor]": "created_at", "expires_after[seconds]": str(expires_s)}
        return form

    async def send_sync(
        self,
        endpoint: str,
        body: bytes,
        *,
        service_tier: str | None = None,
        max_retries: int | None = None,
        read_timeout: float | None = None,
    ) -> SyncResult:
        """The dated API names the deployment in the path; the v1 API reads it from ``model``."""
        if self.account.settings.api_version is None:
            return await super().send_sync(
                endpoint, body, service_tier=service_tier, max_retries=max_retries, read_timeout=read_timeout
            )
        deployment = str(parse_object(body, "sync request body").get("model") or "")  # intake requires it
        # Azure has no flex tier: service_tier is not sent.
        response = await self.post_sync(
            f"/deployments/{deployment}{self.sync_path(endpoint)}", body, max_retries, read_timeout
        )
        doc = parse_object(response.content, f"POST {endpoint}")
        return SyncResult(response.content, doc.get("usage"), response.status_code, dict(response.headers))
