"""The API process freezes its startup heap out of the collector once, garbage collected first."""

from __future__ import annotations

import gc
import weakref

import pytest

from api import app as app_module
from api.app import create_app
from tests.api.harness import asgi
from tests.conftest import make_settings


class Cyclic:
    """An object only a reference cycle keeps: the collector alone can free it."""

    def __init__(self) -> None:
        self.me = self


async def test_startup_freezes_once_and_never_freezes_garbage(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(app_module, "_heap_frozen", False)
    try:
        for _ in range(2):  # the second app's startup (same process) freezes nothing more
            garbage = Cyclic()
            ref = weakref.ref(garbage)
            del garbage
            frozen = gc.get_freeze_count()
            async with asgi(create_app(make_settings(redis_url))) as client:
                assert (await client.get("/healthz")).status_code in (200,)
            gc.collect()
            assert ref() is None  # collected, not frozen along
        assert gc.get_freeze_count() <= frozen  # only deaths by refcount leave the frozen set
    finally:
        gc.unfreeze()
