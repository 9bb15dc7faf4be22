"""The emulated Azure OpenAI API: Global Batch files, batches and deployments' chat completions.

Azure serves OpenAI's batch format under the resource's ``/openai`` path, in two dialects: the
dated API (``/openai/files?api-version=2024-10-21``, sync calls on
``/openai/deployments/{deployment}/chat/completions``) and the v1 API (``/openai/v1/files``, the
deployment named by ``model``). Both take the key in an ``api-key`` header (or an Entra bearer
token). Files and batches are the OpenAI routes' own state, so every fault applies alike; what is
Azure's own: batch lines and creates name endpoints without ``/v1`` (``/chat/completions``), a
batch's ``model`` is the Global Batch deployment's name, a file id a batch lacks reads ``""``,
and the ``token_limit_exceeded`` fault fails a create at once ("fail fast" on a full quota). A
batch never expires by itself here, as on Azure (only the ``expire`` fault expires one).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request
from starlette.responses import Response

from emulator import openai_routes
from emulator.responses import error, json_response

# What a batch's ``endpoint`` may be: Azure's documented form, and OpenAI's, which it accepts too.
BATCH_ENDPOINTS = (
    "/chat/completions",
    "/responses",
    "/embeddings",
    *openai_routes.BATCH_ENDPOINTS,
)
DATED_PREFIX = "/openai"
V1_PREFIX = "/openai/v1"

router = APIRouter()
Handler = Callable[..., Awaitable[Response]]


def _versioned(request: Request) -> None:
    """The dated API refuses a call without ``api-version``; the v1 API needs none."""
    if not request.url.path.startswith(V1_PREFIX + "/") and not request.query_params.get("api-version"):
        raise error(
            request.url.path,
            404,
            "Resource not found: the api-version query parameter (?api-version=) is required.",
            code="404",
        )


async def create_file(request: Request) -> Response:
    _versioned(request)
    return await openai_routes.create_file(request)


async def list_files(request: Request) -> Response:
    _versioned(request)
    return await openai_routes.list_files(request)


async def get_file(request: Request, file_id: str) -> Response:
    _versioned(request)
    return await openai_routes.get_file(request, file_id)


async def delete_file(request: Request, file_id: str) -> Response:
    _versioned(request)
    return await openai_routes.delete_file(request, file_id)


async def get_file_content(request: Request, file_id: str) -> Response:
    _versioned(request)
    return await openai_routes.get_file_content(request, file_id)


async def create_batch(request: Request) -> Response:
    _versioned(request)
    return json_response(await openai_routes.new_batch(request, BATCH_ENDPOINTS, azure=True))


async def list_batches(request: Request) -> Response:
    _versioned(request)
    return await openai_routes.list_batches(request)


async def get_batch(request: Request, batch_id: str) -> Response:
    _versioned(request)
    return await openai_routes.get_batch(request, batch_id)


async def cancel_batch(request: Request, batch_id: str) -> Response:
    _versioned(request)
    return await openai_routes.cancel_batch(request, batch_id)


async def v1_chat_completions(request: Request) -> Response:
    return await openai_routes.sync_answer(request, "/v1/chat/completions")


async def deployment_chat_completions(request: Request, deployment: str) -> Response:
    """The dated API's sync call: the path names the deployment, whatever the body's ``model`` says."""
    _versioned(request)
    return await openai_routes.sync_answer(request, "/v1/chat/completions", deployment)


_ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("POST", "/files", create_file),
    ("GET", "/files", list_files),
    ("GET", "/files/{file_id}", get_file),
    ("DELETE", "/files/{file_id}", delete_file),
    ("GET", "/files/{file_id}/content", get_file_content),
    ("POST", "/batches", create_batch),
    ("GET", "/batches", list_batches),
    ("GET", "/batches/{batch_id}", get_batch),
    ("POST", "/batches/{batch_id}/cancel", cancel_batch),
)
for _prefix in (DATED_PREFIX, V1_PREFIX):
    for _method, _path, _handler in _ROUTES:
        router.add_api_route(_prefix + _path, _handler, methods=[_method])
router.add_api_route(V1_PREFIX + "/chat/completions", v1_chat_completions, methods=["POST"])
router.add_api_route(
    DATED_PREFIX + "/deployments/{deployment}/chat/completions", deployment_chat_completions, methods=["POST"]
)
