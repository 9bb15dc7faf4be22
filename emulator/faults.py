"""The emulator's settings and the faults they inject.

The settings are one flat JSON object (keys listed in :mod:`emulator`); ``POST
/_emulator/config`` merges an object into it, each top-level key replacing the old value whole.
Endpoint patterns in the rate-based faults are ``fnmatch`` patterns on the path, optionally
preceded by a method: ``"/v1/chat/completions"``, ``"POST /v1/batches"``,
``"GET /v1/messages/batches/*"``, ``"*"``.
"""

from __future__ import annotations

import asyncio
import copy
import fnmatch
import hashlib
import random
from collections.abc import Callable
from typing import Any

from emulator.prompt_cache import DEFAULT_WINDOW

DEFAULTS: dict[str, Any] = {
    "turnaround_s": 2.0,
    "stall": [],
    "expire": {},
    "line_error_rate": 0.0,
    "line_error_status": 400,
    "sync_latency_s": 0.0,
    "flex_latency_s": 0.0,
    "hold_sync": False,
    "rate_limit": {},
    "overload": {},
    "server_error": {},
    "retry_after_s": 1.0,
    "fail_next": {},
    "invalid_file": False,
    "token_limit_exceeded": False,
    "flex_unavailable": 0.0,
    "cancel_s": 0.2,
    "seed": 0,
    "cache_window": DEFAULT_WINDOW,
    "webhook_url": None,
    "webhook_secret": None,
}


# How often a held sync call looks whether it was let go: short beside any test's step, and the
# release is observed, never timed.
HOLD_POLL_S = 0.01


class ConfigError(ValueError):
    """Raised when an emulator setting is unknown or has the wrong shape."""


def _number_or_map(key: str, value: Any) -> None:
    if isinstance(value, bool):
        raise ConfigError(f"{key}: a number or an object of model -> number")
    if isinstance(value, int | float):
        if value < 0:
            raise ConfigError(f"{key}: must not be negative")
        return
    if not isinstance(value, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in value.values()
    ):
        raise ConfigError(f"{key}: a number or an object of model -> number")


_NUMBER_OR_MAP = ("turnaround_s", "line_error_rate", "sync_latency_s", "flex_latency_s", "expire")
_RATE_MAPS = ("rate_limit", "overload", "server_error")


def validate(patch: dict[str, Any]) -> None:
    """Refuse unknown keys and wrong shapes, naming the key."""
    for key, value in patch.items():
        if key not in DEFAULTS:
            raise ConfigError(f"unknown emulator setting {key!r}; known: {', '.join(sorted(DEFAULTS))}")
        if key in _NUMBER_OR_MAP:
            _number_or_map(key, value)
        elif key in _RATE_MAPS:
            _number_or_map(key, value)
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: an object of endpoint pattern -> rate")
        elif key == "stall" and not (isinstance(value, list) and all(isinstance(m, str) for m in value)):
            raise ConfigError("stall: a list of model names")
        elif key in ("invalid_file", "token_limit_exceeded", "hold_sync") and not (
            isinstance(value, bool) or (isinstance(value, list) and all(isinstance(m, str) for m in value))
        ):
            raise ConfigError(f"{key}: true/false or a list of model names")
        elif key == "fail_next" and not (
            isinstance(value, dict)
            and all(isinstance(v, list) and all(isinstance(s, int) for s in v) for v in value.values())
        ):
            raise ConfigError("fail_next: an object of endpoint pattern -> list of HTTP statuses")
        elif key == "webhook_url" and not (value is None or (isinstance(value, str) and "://" in value)):
            raise ConfigError("webhook_url: an http(s) URL, or null to send no events")
        elif key == "webhook_secret" and not (
            value is None or (isinstance(value, str) and value.startswith("whsec_"))
        ):
            raise ConfigError("webhook_secret: a whsec_<base64> secret, or null")
        elif key == "cache_window" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ConfigError("cache_window: a whole number of batch lines (0: no caching in batches)")
        elif key in ("retry_after_s", "flex_unavailable", "cancel_s", "line_error_status", "seed") and (
            isinstance(value, bool) or not isinstance(value, int | float) or value < 0
        ):
            raise ConfigError(f"{key}: a non-negative number")


def merged(current: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """``current`` with ``patch``'s top-level keys replacing its own."""
    validate(patch)
    out = copy.deepcopy(current)
    out.update(copy.deepcopy(patch))
    return out


def initial(config: dict[str, Any] | None) -> dict[str, Any]:
    """The defaults with ``config`` merged in."""
    return merged(DEFAULTS, config or {})


def per_model(value: Any, model: str, default: float = 0.0) -> float:
    """A number-or-map setting's value for ``model`` (``"*"`` is the map's default)."""
    if isinstance(value, dict):
        found = value.get(model, value.get("*"))
        return default if found is None else float(found)
    return float(value)


def model_listed(value: Any, model: str) -> bool:
    """Whether a bool-or-list setting names ``model`` (``"*"`` names every model)."""
    if isinstance(value, bool):
        return value
    return model in value or "*" in value


async def held(setting: Callable[[], Any], model: str) -> None:
    """Wait while ``setting()`` (the current ``hold_sync``) names ``model``.

    A test holds a sync call in flight for as long as its steps need and then lets it answer, so
    "the call outlived its lease" never depends on how fast the machine runs.
    """
    while model_listed(setting(), model):  # noqa: ASYNC110 - the setting is replaced whole by any config post
        await asyncio.sleep(HOLD_POLL_S)


def _matches(pattern: str, method: str, path: str) -> bool:
    if " " in pattern:
        want, path_pattern = pattern.split(" ", 1)
        return want.upper() == method and fnmatch.fnmatchcase(path, path_pattern)
    return fnmatch.fnmatchcase(path, pattern)


def injected_status(config: dict[str, Any], rng: random.Random, method: str, path: str) -> int | None:
    """The error status to answer instead of serving the call, or None; consumes ``fail_next``."""
    for pattern, statuses in config["fail_next"].items():
        if statuses and _matches(pattern, method, path):
            return int(statuses.pop(0))
    for key, status in (("rate_limit", 429), ("overload", 529), ("server_error", 500)):
        for pattern, rate in config[key].items():
            if _matches(pattern, method, path) and rng.random() < rate:
                return status
    return None


def line_fails(custom_id: str, rate: float) -> bool:
    """Whether a batch line is made to fail: a stable draw from the custom_id's hash."""
    if rate <= 0:
        return False
    draw = int.from_bytes(hashlib.sha256(custom_id.encode()).digest()[:4], "big") / 2**32
    return draw < rate
