"""A managed Redis: ``rediss://`` with a password reaches the server over TLS, from arq's pool and worker too."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError

from batchshift.embedded_redis import ServerUnavailable, find_server, free_port
from batchshift.server_version import check_server
from scheduler.ledger import tasks
from scheduler.ledger.tasks import create_pool
from tests.conftest import make_settings
from workers.tasks.outcomes import SubmitOutcome
from workers.worker import run_burst

PASSWORD = "tls-pass-7"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(folder: Path) -> None:
    """A throwaway CA and a server certificate for localhost / 127.0.0.1 signed by it."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "1", "-subj", "/CN=batchshift test CA", cwd=folder)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=localhost", cwd=folder)  # fmt: skip
    (folder / "san.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.crt", "-days", "1", "-extfile", "san.cnf", cwd=folder)  # fmt: skip


@contextlib.contextmanager
def tls_redis(folder: Path) -> Iterator[str]:
    """The machine's redis-server listening on TLS only, with a password; yields its rediss:// URL."""
    try:
        binary = find_server("system")
    except ServerUnavailable as exc:
        pytest.skip(f"no system redis-server: {exc}")
    port = free_port()
    proc = subprocess.Popen(
        [binary.path, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", "server.crt", "--tls-key-file", "server.key", "--tls-ca-cert-file", "ca.crt",
         "--tls-auth-clients", "no", "--requirepass", PASSWORD, "--save", "", "--appendonly", "no",
         "--dir", str(folder), "--logfile", "redis.log"],
        cwd=folder,
    )  # fmt: skip
    try:
        for _ in range(200):
            if proc.poll() is not None:
                pytest.skip(f"{binary} does not start with TLS (built without it?)")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            time.sleep(0.05)
        yield f"rediss://:{PASSWORD}@127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the test certificates")
async def test_rediss_with_a_password_works_for_clients_pools_and_workers(tmp_path, monkeypatch) -> None:
    make_certificates(tmp_path)
    # The client trusts the test CA the way it trusts a managed Redis's: through the default CA store.
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.crt"))
    with tls_redis(tmp_path) as url:
        redis = Redis.from_url(url)
        try:
            found = await check_server(redis)
            assert found.supported
        finally:
            await redis.aclose()
        pool = await create_pool(url)
        try:
            job = await pool.enqueue_job(tasks.SUBMIT_BATCH, "bat_unknown", _job_id="tls-1")
            assert job is not None
            worker = await run_burst(make_settings(url))
            assert worker.jobs_complete == 1
            assert await job.result(timeout=5) == SubmitOutcome.MISSING
        finally:
            await pool.aclose()
        plain = Redis.from_url(url.replace(f":{PASSWORD}@", ""))  # TLS, but no password
        try:
            with pytest.raises(AuthenticationError):
                await plain.ping()
        finally:
            await plain.aclose()
