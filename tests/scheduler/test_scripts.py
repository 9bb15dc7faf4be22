"""The Lua loader: keys built in Lua equal keys.py's, no .lua file spells a key, every script compiles."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from redis.asyncio import Redis

from scheduler.ledger import keys, scripts
from scheduler.ledger.jobs import NewJob
from scheduler.ledger.ledger import Finish, Ledger

FOLDERS = (scripts.LUA_DIR, scripts.LIB_DIR)
# Arguments that a careless prelude would mangle: quotes, backslashes, braces, digits, non-ASCII.
TRICKY = ("a'b\"c\\d", "openai:gpt-4o:/v1/chat/{completions}", "tenant-é-ü", "2027-01", "42", "\\ddd\n")


def lua_files() -> list[Path]:
    return sorted(p for folder in FOLDERS for p in folder.glob("*.lua"))


def key_fragments() -> set[str]:
    """The fixed parts of keys.py's keys past the prefix (``:lane:{``, ``}:queue`` ...), at least
    five characters long: any of them in a Lua string literal is a key spelled by hand."""
    fragments = set()
    for name, value in vars(keys).items():
        if inspect.isfunction(value) and value.__module__ == keys.__name__:
            text = value(*("\x00" for _ in inspect.signature(value).parameters))
        elif isinstance(value, str) and name != "PREFIX":
            text = value
        else:
            continue
        for part in text.removeprefix(keys.PREFIX).split("\x00"):
            if len(part) >= 5:
                fragments.add(part)
    return fragments


def hand_spelled(lua: str) -> list[str]:
    """Key prefixes and key fragments spelled in ``lua``'s string literals, and any use of PREFIX
    (comments left out: their prose may quote a word that is also a piece of a key)."""
    lua = re.sub(r"--[^\n]*", "", lua)
    found = [m.group(0) for m in re.finditer(r"\bPREFIX\b", lua)]
    fragments = key_fragments()
    for literal in re.findall(r"'([^'\n]*)'|\"([^\"\n]*)\"", lua):
        text = "".join(literal)
        if text.startswith(keys.PREFIX + ":"):
            found.append(text)
        found.extend(f for f in fragments if f in text)
    return found


def test_hand_spelled_keys_are_found():
    """The check below can fail: a prefix, a hand-built lane key and a PREFIX concatenation are caught."""
    assert hand_spelled(f"redis.call('DEL', '{keys.PREFIX}:job:' .. id)")
    assert hand_spelled("local q = x .. ':lane:{' .. lane .. '}:queue'")
    assert hand_spelled("local k = PREFIX .. ':sync:queue'")
    assert not hand_spelled("redis.call('ZREM', K.lane_queue(lane), id) -- 'jobs:' .. state")
    assert not hand_spelled("-- the worker's own clock, scheduler/ledger/clock.py, not the server's")


@pytest.mark.parametrize("path", lua_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_lua_file_spells_a_key(path: Path):
    """Every key in Lua comes from the prelude (``K.<name>``), generated from keys.py."""
    assert hand_spelled(path.read_text()) == []


def python_value(value: object) -> object:
    """What Redis answers for a Lua value of this Python one."""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, tuple):
        return [python_value(v) for v in value]
    return value


async def test_the_preludes_keys_equal_keys_py_in_redis(redis: Redis):
    """Every ``K`` entry, run in Redis, builds exactly what keys.py builds, tricky arguments included."""
    names = sorted(scripts.key_table())
    calls, expected = [], []
    for name in names:
        value = getattr(keys, name)
        if callable(value):
            arity = len(inspect.signature(value).parameters)
            for shift in range(2):
                args = [TRICKY[(shift + i) % len(TRICKY)] for i in range(arity)]
                calls.append(f"K.{name}({', '.join(scripts.lua_string(a) for a in args)})")
                expected.append(value(*args).encode())
        else:
            calls.append(f"K.{name}")
            expected.append(python_value(value))
    body = "return {\n" + ",\n".join(calls) + "\n}"
    assert await redis.eval(scripts.compose(body), 0) == expected
    # Every public key function and constant is mirrored (PREFIX alone is kept from Lua).
    public = {n for n, v in vars(keys).items() if not n.startswith("_") and n != "annotations"}
    assert set(names) == public - {"PREFIX"}


async def test_constants_come_from_python(redis: Redis):
    """The histogram bounds finish.lua buckets by are keys.LATENCY_BUCKETS_S, read back from Lua."""
    assert await redis.eval(scripts.compose("return LATENCY_BUCKETS_S"), 0) == list(keys.LATENCY_BUCKETS_S)
    assert keys.LATENCY_BUCKETS_S[-1] > 24 * 3600


def test_a_key_not_in_keys_py_fails_when_composed():
    with pytest.raises(ValueError, match=r"K\.jobs_of"):
        scripts.compose("return K.jobs_of('x')")


def test_libraries_come_once_each_after_those_they_use():
    text = scripts.compose("-- uses: costs, metrics\nreturn 1")
    starts = {name: text.index(f"-- lib/{name}.lua") for name in ("json", "tally", "costs", "metrics")}
    assert text.count("-- lib/tally.lua") == 1
    assert starts["tally"] < starts["costs"] < starts["metrics"]
    assert starts["json"] < starts["costs"]


@pytest.mark.parametrize(
    "name",
    list(scripts.script_names()),
)
async def test_every_script_compiles_in_redis(redis: Redis, name: str):
    """SCRIPT LOAD compiles the composed text: a syntax slip in any library fails here, not in production."""
    sha = await redis.script_load(scripts.source(name))
    assert (await redis.script_exists(sha)) == [True]


async def test_a_finish_the_guard_refuses_writes_nothing(redis: Redis):
    """Every concern of finish (state, costs, metrics, SLO, outbox) is gated by the one guard: an
    unbilled result for a job not in the expected state leaves every key as it was."""
    ledger = Ledger(redis)
    job = NewJob(
        id="job_01GUARD",
        tenant="acme",
        provider="openai",
        endpoint="/v1/chat/completions",
        model="m",
        body=b"{}",
        deadline_ms=2_000_000_000_000,
        created_ms=1_800_000_000_000,
        callback_url="https://example.com/hook",
    )
    await ledger.enqueue(job)
    before = {k: await redis.dump(k) for k in await redis.keys("*")}
    stale = Finish(job.id, "succeeded", "batch", from_states=("batched",), actual_usd=0.5, sync_usd=1.0)
    assert await ledger.finish([stale], 1_800_000_001_000) == ["skip:queued"]
    assert {k: await redis.dump(k) for k in await redis.keys("*")} == before


def test_scripts_py_is_the_only_lua_loader():
    """Every script goes through the one loader, so none misses the prelude or its libraries."""
    root = Path(scripts.__file__).resolve().parents[2]
    callers = [
        str(p.relative_to(root))
        for package in ("api", "batchshift", "config", "scheduler", "workers")
        for p in (root / package).rglob("*.py")
        if "register_script(" in p.read_text() or '.lua")' in p.read_text()
    ]
    assert callers == ["scheduler/ledger/scripts.py"]
