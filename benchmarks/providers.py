"""Provider adapter benchmark: a 50,000-request batch through the emulator, each way.

Two figures, each against a raw baseline measured in the same run:

* **build + upload**: spool 50,000 chat requests (bodies of about 1 KB) and upload them to the
  emulator as an OpenAI batch, create included. Baseline: writing the same JSONL to a local file.
* **download + parse**: stream and parse the batch's 50,000 results with the adapter. Baseline:
  reading and parsing the same output file from local disk.

Each measurement runs in a fresh child process so that memory is that step's alone; peak growth is
the child's resident-set high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``) minus
its resident set before the step. ``ru_maxrss`` is avoided: Linux carries it across ``exec`` from
the parent. tracemalloc is not used: it slows the measured code several times over. The emulator
runs in its own process so its CPU and memory stay out of the figures. Targets: growth under
150 MB, ratio at least 0.5.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson

from benchmarks.support import ROOT, emulator_process, peak_growth_mb, reset_peak

REQUESTS = 50_000
BODY_BYTES = 1_000
ENDPOINT = "/v1/chat/completions"
MODEL = "gpt-4o-mini"
EMULATOR_TURNAROUND_S = 1.0


# --- what a child process measures ----------------------------------------------------------


def _bodies() -> Iterator[tuple[str, bytes]]:
    """50,000 (custom_id, body) pairs of about 1 KB each, made as they are needed."""
    filler = "lorem ipsum dolor sit amet " * 40
    for i in range(REQUESTS):
        content = f"request {i}: " + filler[: BODY_BYTES - 110]
        body = {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": content}]}
        yield f"job-{i:06d}", orjson.dumps(body)


async def _upload(url: str) -> dict[str, Any]:
    from config.settings import ProviderSettings
    from workers.http import build_client
    from workers.providers import make_adapter
    from workers.providers.base import BatchLine

    settings = ProviderSettings(kind="openai", base_url=url + "/v1", api_key="sk-bench")
    async with build_client(settings.http) as client:
        adapter = make_adapter("bench", settings, client)
        await adapter.list_batches(1)  # connection warm, as a worker's is (the download step does the same)
        start_kb = reset_peak()
        started = time.perf_counter()
        lines = (BatchLine(cid, body) for cid, body in _bodies())
        info = await adapter.submit_batch(lines, endpoint=ENDPOINT, batch_id="bench")
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "peak_mb": peak_growth_mb(start_kb), "batch": info.provider_batch_id}


def _write_jsonl(path: str) -> dict[str, Any]:
    start_kb = reset_peak()
    started = time.perf_counter()
    prefix, middle = b'{"custom_id":"', b'","method":"POST","url":"' + ENDPOINT.encode() + b'","body":'
    with open(path, "wb") as out:
        for cid, body in _bodies():
            out.write(prefix + cid.encode() + middle + body + b"}\n")
    return {"seconds": time.perf_counter() - started, "peak_mb": peak_growth_mb(start_kb)}


async def _download(url: str, batch: str) -> dict[str, Any]:
    from config.settings import ProviderSettings
    from workers.http import build_client
    from workers.providers import make_adapter

    settings = ProviderSettings(kind="openai", base_url=url + "/v1", api_key="sk-bench")
    async with build_client(settings.http) as client:
        adapter = make_adapter("bench", settings, client)
        await adapter.get_batch(batch)  # connection warm; the batch has ended already
        start_kb = reset_peak()
        started = time.perf_counter()
        count = succeeded = 0
        async for block in adapter.result_blocks(batch):  # as ingestion reads them
            for line in block:
                count += 1
                succeeded += line.outcome == "succeeded"
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "peak_mb": peak_growth_mb(start_kb), "count": count, "succeeded": succeeded}


def _read_jsonl(path: str) -> dict[str, Any]:
    start_kb = reset_peak()
    started = time.perf_counter()
    count = 0
    with open(path, "rb") as results:
        for raw in results:
            line = orjson.loads(raw)
            count += line["response"]["status_code"] == 200
    return {"seconds": time.perf_counter() - started, "peak_mb": peak_growth_mb(start_kb), "count": count}


def _child_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("case", choices=["upload", "write", "download", "read"])
    parser.add_argument("--url", default="")
    parser.add_argument("--batch", default="")
    parser.add_argument("--path", default="")
    args = parser.parse_args(argv)
    if args.case == "upload":
        result = asyncio.run(_upload(args.url))
    elif args.case == "write":
        result = _write_jsonl(args.path)
    elif args.case == "download":
        result = asyncio.run(_download(args.url, args.batch))
    else:
        result = _read_jsonl(args.path)
    print(json.dumps(result))


# --- the parent: emulator, children, figures --------------------------------------------------


async def _child(*args: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.providers", *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark step {args[0]} failed with exit code {proc.returncode}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def _wait_ended(url: str, batch: str) -> str:
    async with httpx.AsyncClient(
        base_url=url + "/v1", headers={"authorization": "Bearer sk-bench"}
    ) as client:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            doc = (await client.get(f"/batches/{batch}", timeout=120)).json()
            if doc["status"] in ("completed", "failed", "expired", "cancelled"):
                output: str = doc["output_file_id"]
                return output
            await asyncio.sleep(0.5)
    raise RuntimeError("the benchmark batch did not end")


async def _save(url: str, file_id: str, path: str) -> None:
    async with httpx.AsyncClient(headers={"authorization": "Bearer sk-bench"}, timeout=120) as client:
        async with client.stream("GET", f"{url}/v1/files/{file_id}/content") as response:
            response.raise_for_status()
            with open(path, "wb") as out:  # noqa: ASYNC230 - a one-off local write outside any measurement
                async for chunk in response.aiter_bytes():
                    out.write(chunk)


def _row(figure: str, ours: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    throughput, baseline = REQUESTS / ours["seconds"], REQUESTS / base["seconds"]
    return {
        "figure": figure,
        "name": figure,
        "throughput": throughput,
        "unit": "req/s",
        "baseline": baseline,
        "ratio": throughput / baseline,
        "peak_mb": ours["peak_mb"],  # peak growth over the step's start, in its own process
        "peak_mem_growth_mb": ours["peak_mb"],
        "baseline_peak_mem_growth_mb": base["peak_mb"],
    }


async def run() -> list[dict[str, Any]]:
    """Both figures, each with its baseline from this run."""
    with tempfile.TemporaryDirectory() as tmp, emulator_process() as url:
        input_path, output_path = os.path.join(tmp, "input.jsonl"), os.path.join(tmp, "output.jsonl")
        write = await _child("write", "--path", input_path)
        upload = await _child("upload", "--url", url)
        output_file = await _wait_ended(url, upload["batch"])
        await _save(url, output_file, output_path)
        read = await _child("read", "--path", output_path)
        download = await _child("download", "--url", url, "--batch", upload["batch"])
        if download["count"] != REQUESTS or read["count"] != REQUESTS:
            raise RuntimeError(f"expected {REQUESTS} results, got {download['count']} / {read['count']}")
    return [
        _row(f"build + upload a {REQUESTS:,}-request batch (peak = growth)", upload, write),
        _row(f"download + parse {REQUESTS:,} results (peak = growth)", download, read),
    ]


if __name__ == "__main__":
    _child_main(sys.argv[1:])
