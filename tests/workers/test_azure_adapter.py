"""The Azure adapter's own choices: the API dialect's base and version, the upload form, the limits."""

from __future__ import annotations

import httpx
import pytest

from config.settings import ProviderSettings
from workers.providers import AzureAdapter, make_adapter

RESOURCE = "https://res.openai.azure.com/openai"


def _adapter(client: httpx.AsyncClient, **settings: object) -> AzureAdapter:
    adapter = make_adapter(
        "azure", ProviderSettings(kind="azure_openai", base_url=RESOURCE, api_key="k", **settings), client
    )
    assert isinstance(adapter, AzureAdapter)
    return adapter


@pytest.mark.parametrize(
    ("api_version", "base", "params"),
    [("2024-10-21", RESOURCE, {"api-version": "2024-10-21"}), (None, RESOURCE + "/v1", {})],
)
async def test_the_dialect_sets_base_and_version(api_version, base, params) -> None:
    async with httpx.AsyncClient() as client:
        adapter = _adapter(client, api_version=api_version)
    assert adapter.account.url("/batches") == base + "/batches"
    assert adapter.account.params == params
    assert adapter.account.headers == {"api-key": "k"}
    assert adapter.batch_endpoint("/v1/chat/completions") == "/chat/completions"


async def test_input_files_expire_when_asked() -> None:
    async with httpx.AsyncClient() as client:
        assert _adapter(client).upload_form() == {"purpose": "batch"}
        assert _adapter(client, input_file_expires_s=1_209_600).upload_form() == {
            "purpose": "batch",
            "expires_after[anchor]": "created_at",
            "expires_after[seconds]": "1209600",
        }


def test_azure_limits_and_deployment_models() -> None:
    azure = ProviderSettings(
        kind="azure_openai", base_url=RESOURCE, deployments={"mini-batch": "gpt-4o-mini"}
    )
    assert (azure.batch_request_limit(), azure.batch_byte_limit()) == (100_000, 200 * 1024 * 1024)
    assert azure.min_poll_s() == 60.0
    assert azure.priced_model("mini-batch") == "gpt-4o-mini"
    assert azure.priced_model("gpt-4o") == "gpt-4o"
    openai = ProviderSettings(kind="openai", base_url="https://api.openai.com/v1")
    assert (openai.batch_request_limit(), openai.min_poll_s()) == (50_000, 0.0)
