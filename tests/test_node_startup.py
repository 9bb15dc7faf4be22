"""``batchshift run`` as its own process, started where it cannot serve."""

from __future__ import annotations

import os
import socket
import subprocess
import sys


def test_run_on_a_port_in_use_exits_3_with_only_the_bind_error(redis_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "BATCHSHIFT_REDIS_URL": redis_url, "BATCHSHIFT_LOG_FORMAT": "json"}
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "batchshift.cli",
                "run",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--grace",
                "1",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    output = done.stdout + done.stderr
    assert done.returncode == 3, output
    assert "address already in use" in output
    assert "never retrieved" not in output
    assert "Traceback" not in output
