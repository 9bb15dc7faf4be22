"""The workers error tree: every class survives pickling, provider error bodies map to our types."""

from __future__ import annotations

import inspect
import pickle

import httpx
import pytest

from workers import errors
from workers.http import error_for_response

SAMPLE_ARGS: dict[type[errors.WorkerError], tuple[object, ...]] = {
    errors.ProviderHTTPError: (429, "rate_limit_error", "slow down", True, 1.5),
    errors.TransportError: ("POST", "https://api.example/v1/batches", "ReadTimeout"),
    errors.BatchCreateUnknown: ("b_1", "ReadTimeout"),
    errors.BatchNotEnded: ("batch_1", "in_progress"),
    errors.MalformedResponse: ("not JSON",),
    errors.BatchTooLarge: (3, 300, 2, 1000),
    errors.InvalidBatchInput: ("job 1", "custom_id repeated"),
    errors.LeaseLost: ("b_1", "held by another submission"),
    errors.UnsafeDestination: ("hooks.example", "10.0.0.1", "a private address"),
    errors.ChannelNotConfigured: ("slack",),
}


def _all_error_classes() -> list[type[errors.WorkerError]]:
    return [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.WorkerError) and cls.__module__ == errors.__name__
    ]


def _args_for(cls: type[errors.WorkerError]) -> tuple[object, ...]:
    for base in cls.__mro__:
        if base in SAMPLE_ARGS:
            return SAMPLE_ARGS[base]
    return ()


@pytest.mark.parametrize("cls", _all_error_classes(), ids=lambda c: c.__name__)
def test_every_error_class_survives_pickling(cls: type[errors.WorkerError]) -> None:
    original = cls(*_args_for(cls))
    copy = pickle.loads(pickle.dumps(original))  # noqa: S301 - our own bytes, made one line above
    assert type(copy) is cls
    assert copy.args == original.args
    assert str(copy) == str(original)
    assert vars(copy) == vars(original)


def test_every_error_class_is_drawn_in_the_module_tree() -> None:
    doc = errors.__doc__ or ""
    missing = [cls.__name__ for cls in _all_error_classes() if cls.__name__ not in doc]
    assert missing == []


@pytest.mark.parametrize(
    ("status", "body", "cls", "err_type", "retriable"),
    [
        (
            429,
            b'{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}',
            errors.RateLimited,
            "requests",
            True,
        ),
        (
            529,
            b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}',
            errors.Overloaded,
            "overloaded_error",
            True,
        ),
        (
            503,
            b'{"error":{"message":"The engine is currently overloaded","type":"server_error","code":"overloaded"}}',
            errors.Overloaded,
            "server_error",
            True,
        ),
        (
            500,
            b'{"error":{"message":"oops","type":"server_error","code":null}}',
            errors.ServerError,
            "server_error",
            True,
        ),
        (502, b"<html>bad gateway</html>", errors.ServerError, "http_502", True),
        (
            401,
            b'{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}',
            errors.AuthenticationError,
            "authentication_error",
            False,
        ),
        (
            404,
            b'{"error":{"message":"No such File","type":"invalid_request_error","code":null}}',
            errors.ProviderNotFound,
            "invalid_request_error",
            False,
        ),
        (
            400,
            b'{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}',
            errors.ProviderInvalidRequest,
            "invalid_request_error",
            False,
        ),
        (
            413,
            b'{"type":"error","error":{"type":"request_too_large","message":"too big"}}',
            errors.ProviderInvalidRequest,
            "request_too_large",
            False,
        ),
    ],
)
def test_provider_error_bodies_map_to_our_types(
    status: int, body: bytes, cls: type[errors.ProviderHTTPError], err_type: str, retriable: bool
) -> None:
    exc = error_for_response(status, httpx.Headers(), body)
    assert type(exc) is cls
    assert exc.status == status
    assert exc.type == err_type
    assert exc.retriable is retriable
    assert exc.message


def test_retry_after_headers_are_read_in_seconds() -> None:
    assert error_for_response(429, httpx.Headers({"retry-after": "7"}), b"").retry_after == 7.0
    assert error_for_response(429, httpx.Headers({"retry-after-ms": "250"}), b"").retry_after == 0.25
    dated = httpx.Headers({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert error_for_response(503, dated, b"").retry_after == 0.0  # a date in the past: no wait


def test_x_should_retry_overrides_the_status() -> None:
    exc = error_for_response(409, httpx.Headers({"x-should-retry": "true"}), b"")
    assert exc.retriable is True
    exc = error_for_response(500, httpx.Headers({"x-should-retry": "false"}), b"")
    assert exc.retriable is False
