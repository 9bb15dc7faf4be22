"""Loads the Lua scripts in scheduler/lua/: each script is _lib.lua's helpers plus its own body."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from scheduler import keys

LUA_DIR = Path(__file__).with_name("lua")


@cache
def source(name: str) -> str:
    """The full text of script ``name`` (without ``.lua``), helpers included."""
    prelude = f'local PREFIX = "{keys.PREFIX}"\n' + (LUA_DIR / "_lib.lua").read_text()
    return prelude + "\n" + (LUA_DIR / f"{name}.lua").read_text()


def load(redis: Redis, name: str) -> AsyncScript:
    """Script ``name`` bound to ``redis`` (EVALSHA, falling back to EVAL once)."""
    return redis.register_script(source(name))
