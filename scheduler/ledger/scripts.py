"""The one loader of batchshift's Lua scripts, and the prelude that gives them Python's names.

A script as Redis runs it is composed of three parts, in this order:

1. **The prelude, generated from Python.** ``K`` mirrors scheduler/ledger/keys.py: ``K.job(id)`` builds what
   ``keys.job(id)`` builds, ``K.SYNC_QUEUE`` is ``keys.SYNC_QUEUE``, ``K.BUDGET_TTL_S`` is
   ``keys.BUDGET_TTL_S``; each key function becomes a Lua function by calling the Python one with
   placeholders, so no key is spelled twice. The values in :data:`CONSTANTS` (the histogram bounds
   of scheduler/costs/metrics.py) come as locals of the same name. Only the names a script mentions are
   defined: a script pays for none it does not use at each call, and a misspelt name fails when the
   script is composed (in every test that loads it), not in production.
2. **The libraries it names** on a ``-- uses: a, b`` line, from scheduler/ledger/lua/lib/ (a library may
   use others; each comes once, after those it uses).
3. **The script's own file**, from scheduler/ledger/lua/ (the workers' outbox scripts live there too).

A script whose step holds several concerns (finish.lua: the job's state and result, its costs and
budget, lane metrics and SLO buckets, the outbox) keeps each concern in its own library, composed
into one script, rather than one script per concern run in one MULTI. Every concern depends on the
state guard's verdict for each job of the chunk, and inside MULTI a script cannot read an earlier
script's reply, nor can one script call another: each part would have to read and judge every job
again (four reads per job instead of one, and the guard written in four places that must agree).
One composed script keeps one guard, one read per job and one atomic step.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Final

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from scheduler.ledger import keys

LUA_DIR: Final = Path(__file__).with_name("lua")
LIB_DIR: Final = LUA_DIR / "lib"

# Python values Lua reads, by the local name the prelude gives them (a tuple becomes a Lua array).
CONSTANTS: Final[dict[str, object]] = {"LATENCY_BUCKETS_S": keys.LATENCY_BUCKETS_S}

# Lua's reserved words: a key function's parameter named like one is renamed in its Lua version.
_LUA_RESERVED: Final = frozenset(
    "and break do else elseif end false for function if in local nil not or repeat return then true "
    "until while".split()
)
_USES: Final = re.compile(r"^--\s*uses:\s*(.+)$", re.MULTILINE)
_K_NAME: Final = re.compile(r"\bK\.([A-Za-z_]\w*)")
_PLACEHOLDER: Final = re.compile("\x00(\\d+)\x00")


def lua_string(text: str) -> str:
    """``text`` as a Lua string literal: printable ASCII as is, every other byte as ``\\ddd``."""
    out = []
    for byte in text.encode():
        out.append(chr(byte) if 32 <= byte < 127 and byte not in b"\\'" else f"\\{byte:03d}")
    return "'" + "".join(out) + "'"


def lua_value(value: object) -> str:
    """A Python constant (str, int, finite float, or a tuple of them) as a Lua expression."""
    if isinstance(value, str):
        return lua_string(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "{" + ", ".join(lua_value(v) for v in value) + "}"
    raise TypeError(f"no Lua form for {value!r}")


def lua_key_function(fn: Callable[..., str]) -> str:
    """A key function of keys.py as a Lua function building the same string.

    The Python function is called with a placeholder per parameter; what surrounds the placeholders
    in its answer is the template. A function that did more than interpolate its arguments would
    not survive this, and the prelude test (Lua against Python, in Redis) says so.
    """
    params = list(inspect.signature(fn).parameters)
    text = fn(*(f"\x00{i}\x00" for i in range(len(params))))
    names = [f"{p}_" if p in _LUA_RESERVED else p for p in params]
    pieces = []
    for i, part in enumerate(_PLACEHOLDER.split(text)):
        if i % 2:
            pieces.append(names[int(part)])
        elif part:
            pieces.append(lua_string(part))
    return f"function({', '.join(names)}) return {' .. '.join(pieces) or repr('')} end"


def _mirror(module: ModuleType) -> dict[str, str]:
    """Every public key function and constant of ``module`` as Lua, by name (its PREFIX excepted:
    Lua builds no key by hand)."""
    out: dict[str, str] = {}
    for name, value in vars(module).items():
        if name.startswith("_") or name == "PREFIX":
            continue
        if inspect.isfunction(value) and value.__module__ == module.__name__:
            out[name] = lua_key_function(value)
        elif isinstance(value, str | int | float | tuple) and not isinstance(value, bool):
            out[name] = lua_value(value)
    return out


@cache
def key_table() -> dict[str, str]:
    """``K``'s entries: keys.py's names, each as Lua source."""
    return _mirror(keys)


def prelude(text: str) -> str:
    """The generated definitions ``text`` refers to: the ``K`` entries it names and its constants."""
    table = key_table()
    used = sorted(set(_K_NAME.findall(text)))
    unknown = [name for name in used if name not in table]
    if unknown:
        raise ValueError(f"not in scheduler/ledger/keys.py: {', '.join('K.' + n for n in unknown)}")
    lines = []
    if used:
        entries = ",\n".join(f"  {name} = {table[name]}" for name in used)
        lines.append("local K = {\n" + entries + "\n}")
    for name, value in CONSTANTS.items():
        if re.search(rf"\b{name}\b", text):
            lines.append(f"local {name} = {lua_value(value)}")
    return "\n".join(lines)


def _libraries(text: str, seen: list[str], visiting: tuple[str, ...] = ()) -> None:
    """Append the libraries ``text`` uses to ``seen``, each after those it uses itself."""
    for line in _USES.findall(text):
        for name in (n.strip() for n in line.split(",")):
            if name in visiting:
                raise ValueError(
                    f"Lua libraries use each other in a circle: {' -> '.join((*visiting, name))}"
                )
            if name and name not in seen:
                _libraries((LIB_DIR / f"{name}.lua").read_text(), seen, (*visiting, name))
                seen.append(name)


def compose(body: str) -> str:
    """``body`` with the prelude and the libraries it uses before it: what Redis runs."""
    names: list[str] = []
    _libraries(body, names)
    parts = [f"-- lib/{name}.lua\n" + (LIB_DIR / f"{name}.lua").read_text() for name in names]
    code = "\n".join((*parts, body))
    return "\n".join(p for p in (prelude(code), code) if p)


@cache
def source(name: str) -> str:
    """The full text of script ``name`` (its file ``lua/<name>.lua``), prelude and libraries included."""
    return compose((LUA_DIR / f"{name}.lua").read_text())


def load(redis: Redis, name: str) -> AsyncScript:
    """Script ``name`` bound to ``redis`` (EVALSHA, falling back to EVAL once)."""
    return redis.register_script(source(name))


def script_names() -> Iterable[str]:
    """Every script (libraries excluded), for tests that check them all."""
    return sorted(p.stem for p in LUA_DIR.glob("*.lua"))
