"""Polling helpers for tests that drive the emulator through the official SDKs."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
POLL_S = 0.02


def poll_until(fetch: Callable[[], T], done: Callable[[T], bool]) -> T:
    """Call ``fetch`` until ``done`` holds for its answer; what never gets done fails the test by
    its timeout, not by a budget here that a slow machine could run out of."""
    while not done(value := fetch()):
        time.sleep(POLL_S)
    return value
