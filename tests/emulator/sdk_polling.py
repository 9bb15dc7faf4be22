"""Polling helpers for tests that drive the emulator through the official SDKs."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
POLL_S = 0.02
WAIT_S = 10.0


def poll_until(fetch: Callable[[], T], done: Callable[[T], bool], timeout: float = WAIT_S) -> T:
    """Call ``fetch`` until ``done`` holds for its answer; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still not done after {timeout}s: {value!r}")
        time.sleep(POLL_S)
