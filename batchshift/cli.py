"""The ``batchshift`` command: parses arguments, builds settings once, and wires the parts.

Each subcommand is one ``_add_<name>(subparsers)`` function that declares its arguments and sets
``handler`` (a function of the parsed arguments returning an exit code); adding a command is one
function plus one entry in ``COMMANDS``. Handlers only wire: decisions live in the packages.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import ConnectionError as RedisConnectionError

from batchshift.server_version import ServerError
from config.logging import configure_logging
from config.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from batchshift.client import BatchshiftClient

Subparsers = Any  # argparse's _SubParsersAction is private; its type is not worth importing.
Handler = Callable[[argparse.Namespace], int]

# Exit status for a bad setting or bad usage (argparse's own convention).
EXIT_USAGE = 2


def bootstrap() -> Settings:
    """Load settings (raising SettingsError) and configure logging from them; every handler starts here."""
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    return settings


def bootstrap_process() -> Settings:
    """:func:`bootstrap` for a long-running process (api, scheduler, worker, run): it also says
    whether tracing is on and where its spans go."""
    from config.tracing import log_startup

    settings = bootstrap()
    log_startup(settings.tracing)
    return settings


def _add_bind(parser: argparse.ArgumentParser, what: str, port: int) -> None:
    """``--host`` and ``--port`` for a command that serves HTTP."""
    parser.add_argument("--host", default="127.0.0.1", help=f"address {what} binds (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=port, help=f"port {what} binds (default {port})")


def _unwritable(path: str) -> str | None:
    """Why a report cannot be written to ``path``, asked before minutes of work rather than after."""
    from pathlib import Path

    target = Path(path)
    if target.is_dir():
        return f"cannot write {path}: it is a directory"
    if not target.parent.is_dir():
        return f"cannot write {path}: no directory {target.parent}"
    return None


def _write_report(path: str, write: Callable[[], object]) -> int:
    """Run ``write``; an OS refusal (permissions, a full disk) is one line naming the file, not a traceback."""
    try:
        write()
    except OSError as exc:
        print(f"batchshift: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def _command(subparsers: Subparsers, name: str, summary: str) -> argparse.ArgumentParser:
    """A subcommand whose own ``--help`` opens with the summary ``batchshift --help`` lists for it."""
    parser: argparse.ArgumentParser = subparsers.add_parser(name, help=summary, description=summary)
    return parser


def _add_grace(parser: argparse.ArgumentParser) -> None:
    """``--grace`` for a command that runs worker tasks."""
    parser.add_argument(
        "--grace",
        type=float,
        default=30.0,
        help="seconds tasks in flight get to finish on SIGTERM (default 30)",
    )


# -- batchshift api ---------------------------------------------------------------------------


def _run_api(args: argparse.Namespace) -> int:
    import asyncio

    import uvicorn

    from api.app import create_app
    from batchshift.processes import check_redis

    settings = bootstrap_process()
    asyncio.run(check_redis(settings))  # logs the server and its version; refuses one too old
    # log_config=None keeps our logging; the request-id middleware logs each request instead of
    # uvicorn's access log, with the request id bound (when BATCHSHIFT_LOG_ACCESS is on).
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        server_header=False,
    )
    return 0


def _add_api(subparsers: Subparsers) -> None:
    parser = _command(subparsers, "api", "serve the HTTP API (intake, job status)")
    _add_bind(parser, "the API", 8000)
    parser.set_defaults(handler=_run_api)


# -- batchshift costs -------------------------------------------------------------------------


def _admin_call(args: argparse.Namespace, call: Callable[[BatchshiftClient], Awaitable[Any]]) -> Any:
    """Run one client call against ``args.url`` with ``args.api_key`` (default: the configured admin
    key); on failure print why and return None."""
    import asyncio

    from batchshift.client import ApiError, BatchshiftClient, TransportError

    settings = bootstrap()
    key = args.api_key or (settings.admin_api_key.get_secret_value() if settings.admin_api_key else "")

    async def run() -> Any:
        async with BatchshiftClient(args.url, key) as client:
            return await call(client)

    try:
        return asyncio.run(run())
    except TransportError as exc:
        print(f"batchshift: cannot reach {args.url}: {exc}", file=sys.stderr)
    except ApiError as exc:
        print(f"batchshift: {exc}", file=sys.stderr)
    return None


# Columns a report table is laid out in at least: rich would otherwise cut lane names and headers
# to 80 columns whenever the output is a pipe or a file (``batchshift lanes > lanes.txt``).
REPORT_WIDTH = 170


def _print_wide(table: Any) -> None:
    """Print ``table`` no narrower than ``REPORT_WIDTH`` columns (wider on a wider terminal)."""
    from rich.console import Console

    Console(width=max(Console().width, REPORT_WIDTH)).print(table)


def _run_costs(args: argparse.Namespace) -> int:
    from rich.table import Table

    report = _admin_call(
        args, lambda client: client.costs(group_by=args.group_by, start=args.start, end=args.end)
    )
    if report is None:
        return 1
    table = Table(title=f"costs by {report['group_by']}, {report['from']} to {report['to']} (UTC)")
    columns = ("jobs", "actual_usd", "sync_equivalent_usd", "saved_usd", "saved_pct", "sync_share")
    headers = (
        "key",
        "jobs",
        "actual $",
        "sync-eq $",
        "saved $",
        "saved %",
        "sync share",
        "dup $",
        "on time %",
    )
    for header in headers:
        table.add_column(header, justify="left" if header == "key" else "right")

    def cells(row: dict[str, Any]) -> list[str]:
        shown = [
            f"{row[c]:.4f}" if c.endswith("_usd") else str(row[c] if row[c] is not None else "-")
            for c in columns
        ]
        return [
            *shown,
            f"{row['duplicate_usd']:.4f}",
            str(row["on_time_pct"] if row["on_time_pct"] is not None else "-"),
        ]

    for row in report["groups"]:
        table.add_row(str(row["key"]), *cells(row))
    table.add_row("total", *cells(report["total"]), style="bold")
    _print_wide(table)
    return 0


def _add_costs(subparsers: Subparsers) -> None:
    parser = _command(subparsers, "costs", "print what jobs cost and what batching saved")
    parser.add_argument(
        "--group-by", default="tenant", choices=("tenant", "feature", "lane", "model", "route", "day")
    )
    parser.add_argument("--from", dest="start", help="first UTC day, YYYY-MM-DD (default: 30 days ago)")
    parser.add_argument("--to", dest="end", help="last UTC day, YYYY-MM-DD (default: today)")
    parser.add_argument(
        "--url", default="http://127.0.0.1:8000", help="the API's base URL (default http://127.0.0.1:8000)"
    )
    parser.add_argument("--api-key", help="a tenant or admin key (default: the configured admin key)")
    parser.set_defaults(handler=_run_costs)


# -- batchshift lanes -------------------------------------------------------------------------


def _run_lanes(args: argparse.Namespace) -> int:
    from rich.table import Table

    lanes = _admin_call(args, lambda client: client.lanes())
    if lanes is None:
        return 1
    table = Table(title="lanes")
    headers = ("lane", "state", "queued", "oldest s", "in flight", "p50 s", "p95 s", "on time", "burn",
               "sync share", "oldest done by")  # fmt: skip
    for header in headers:
        table.add_column(header, justify="left" if header in ("lane", "state", "oldest done by") else "right")
    style = {"healthy": "green", "lagging": "yellow", "breaching": "bold red"}

    def show(value: Any, fmt: str = "{}") -> str:
        return "-" if value is None else fmt.format(value)

    for lane in lanes:
        turnaround = lane["turnaround_s"]
        burn = max((max(b.values()) for b in lane["burn_rates"].values() if b), default=None)
        table.add_row(
            lane["lane"],
            f"[{style[lane['state']]}]{lane['state']}[/]" if lane["state"] in style else lane["state"] or "-",
            str(lane["queued"]),
            show(lane["oldest_job_age_s"], "{:.0f}"),
            str(lane["batches_in_flight"]),
            show(turnaround["p50"], "{:.1f}"),
            show(turnaround["p95"], "{:.1f}"),
            show(lane["on_time_ratio"], "{:.2%}"),
            show(burn, "{:.1f}x"),
            show(lane["sync_share"], "{:.1%}"),
            show(lane["predicted_oldest_completion"]),
        )
    _print_wide(table)
    return 0


def _add_lanes(subparsers: Subparsers) -> None:
    parser = _command(subparsers, "lanes", "print each lane's health, queue and on-time SLO")
    parser.add_argument(
        "--url", default="http://127.0.0.1:8000", help="the API's base URL (default http://127.0.0.1:8000)"
    )
    parser.add_argument("--api-key", help="the admin key (default: the configured admin key)")
    parser.set_defaults(handler=_run_lanes)


# -- batchshift scheduler / worker / run ------------------------------------------------------


def _run_scheduler(args: argparse.Namespace) -> int:
    from batchshift.processes import run_loop, run_scheduler

    run_loop(run_scheduler(bootstrap_process()))
    return 0


def _add_scheduler(subparsers: Subparsers) -> None:
    parser = _command(
        subparsers, "scheduler", "run the tick loop under the Redis leader lease (one acts, others stand by)"
    )
    parser.set_defaults(handler=_run_scheduler)


def _run_worker(args: argparse.Namespace) -> int:
    from batchshift.processes import run_loop, run_worker

    run_loop(run_worker(bootstrap_process(), grace_s=args.grace))
    return 0


def _add_worker(subparsers: Subparsers) -> None:
    parser = _command(subparsers, "worker", "run the arq worker (submit, poll, ingest, sync, webhooks)")
    _add_grace(parser)
    parser.set_defaults(handler=_run_worker)


def _run_node(args: argparse.Namespace) -> int:
    from batchshift.processes import run_loop, run_node

    return run_loop(run_node(bootstrap_process(), args.host, args.port, grace_s=args.grace))


def _add_run(subparsers: Subparsers) -> None:
    parser = _command(
        subparsers, "run", "run the API, the scheduler and a worker in one process (single-node deployments)"
    )
    _add_bind(parser, "the API", 8000)
    _add_grace(parser)
    parser.set_defaults(handler=_run_node)


# -- batchshift emulator / demo ---------------------------------------------------------------


def _run_emulator(args: argparse.Namespace) -> int:
    import orjson

    from emulator.faults import ConfigError, validate
    from emulator.server import serve

    try:
        faults = orjson.loads(args.config) if args.config else {}
    except orjson.JSONDecodeError as exc:
        print(f"batchshift: --config is not JSON: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not isinstance(faults, dict):
        print(
            "batchshift: --config must be a JSON object, e.g. '{\"line_error_rate\": 0.05}'", file=sys.stderr
        )
        return EXIT_USAGE
    if args.turnaround is not None:
        faults["turnaround_s"] = args.turnaround
    if args.stall:
        faults["stall"] = args.stall
    try:  # refused here in one line, before the server starts, rather than as its traceback
        validate(faults)
    except ConfigError as exc:
        print(f"batchshift: {exc}", file=sys.stderr)
        return EXIT_USAGE
    serve(args.host, args.port, api_key=args.api_key, **faults)
    return 0


def _add_emulator(subparsers: Subparsers) -> None:
    parser = _command(
        subparsers,
        "emulator",
        "serve the OpenAI + Anthropic + Gemini provider emulator (development, tests, demo)",
    )
    _add_bind(parser, "the emulator", 8090)
    parser.add_argument("--api-key", help="accept only this key (default: any non-empty key)")
    parser.add_argument(
        "--turnaround", type=float, help="seconds from submission to a batch's end (default 2)"
    )
    parser.add_argument("--stall", nargs="*", metavar="MODEL", help="models whose batches make no progress")
    parser.add_argument(
        "--config", help="other emulator settings as a JSON object, e.g. '{\"line_error_rate\": 0.05}'"
    )
    parser.set_defaults(handler=_run_emulator)


def _run_demo(args: argparse.Namespace) -> int:
    from batchshift.demo import main as demo_main

    return demo_main(jobs=args.jobs)


def _add_demo(subparsers: Subparsers) -> None:
    parser = _command(
        subparsers,
        "demo",
        "run the whole job on this machine: jobs in, a lagging lane rescued, savings reported",
    )
    parser.add_argument("--jobs", type=int, default=900, help="jobs to submit (default 900)")
    parser.set_defaults(handler=_run_demo)


# -- batchshift simulate ----------------------------------------------------------------------


def _run_simulate(args: argparse.Namespace) -> int:
    from pathlib import Path

    import orjson

    from batchshift.simulation import engine, outcome, report, scenario
    from scheduler.costs.pricing import Pricing

    settings = bootstrap()
    if args.plot and (problem := _unwritable(args.plot)):
        print(f"batchshift: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if args.plot and Path(args.plot).suffix.lower() not in ("", ".png"):
        print(f"batchshift: --plot writes a PNG: name it *.png, not {args.plot}", file=sys.stderr)
        return EXIT_USAGE
    try:
        spec = scenario.load(Path(args.scenario))
        outcomes = engine.simulate(spec, settings, Pricing.load(settings.pricing_file))
    except scenario.ScenarioError as exc:
        print(f"batchshift: {exc}", file=sys.stderr)
        return EXIT_USAGE
    title = Path(args.scenario).stem
    if args.json:
        sys.stdout.write(orjson.dumps(outcome.as_json(outcomes)).decode() + "\n")
    else:
        report.print_table(outcomes, title)
    if args.plot:
        return _write_report(args.plot, lambda: report.plot(outcomes, title, Path(args.plot)))
    return 0


def _add_simulate(subparsers: Subparsers) -> None:
    parser = _command(
        subparsers, "simulate", "the policy lab: run a scenario against every flip policy on a virtual clock"
    )
    parser.add_argument("scenario", metavar="SCENARIO.toml", help="scenario file (see config/scenarios/)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG of savings against on-time per policy")
    parser.set_defaults(handler=_run_simulate)


# -- batchshift audit -------------------------------------------------------------------------


def _run_audit(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    import orjson

    from batchshift.audit import html_report, report, rules, terminal
    from batchshift.audit.errors import AuditError
    from scheduler.costs.pricing import Pricing

    settings = bootstrap()
    if args.simulate_top < 0:
        print("batchshift: --simulate-top must be 0 or more", file=sys.stderr)
        return EXIT_USAGE
    if args.html and (problem := _unwritable(args.html)):
        print(f"batchshift: {problem}", file=sys.stderr)
        return EXIT_USAGE
    started = time.perf_counter()
    try:
        user_rules = rules.load(Path(args.rules)) if args.rules else rules.Rules()
        audit = report.run(
            [Path(p) for p in args.logs],
            user_rules,
            settings,
            Pricing.load(settings.pricing_file),
            simulate_top=0 if args.no_simulation else args.simulate_top,
        )
    except AuditError as exc:
        print(f"batchshift: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.html:
        html = html_report.render(audit)
        if status := _write_report(args.html, lambda: Path(args.html).write_text(html, encoding="utf-8")):
            return status
    if args.json:
        sys.stdout.write(orjson.dumps(audit.as_json()).decode() + "\n")
    else:
        terminal.print_report(audit)
        print(f"audited in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


def _add_audit(subparsers: Subparsers) -> None:
    parser = _command(
        subparsers,
        "audit",
        "read logs of synchronous LLM calls: what could move to batch or flex, and what it saves",
    )
    parser.add_argument(
        "logs",
        nargs="+",
        metavar="LOG",
        help="OTLP JSON, LiteLLM spend logs (JSON or CSV), or the audit's JSONL",
    )
    parser.add_argument(
        "--rules", metavar="RULES.toml", help="per-feature tolerances: [[rules]] feature, tolerance_h"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report with charts")
    parser.add_argument(
        "--simulate-top",
        type=int,
        default=20,  # batchshift.audit.report.DEFAULT_SIMULATE_TOP, not imported to keep --help fast
        metavar="N",
        help="simulate the deadlines (1 h, 4 h, 24 h) of the N most expensive features (default 20)",
    )
    parser.add_argument("--no-simulation", action="store_true", help="skip the deadline simulations")
    parser.set_defaults(handler=_run_audit)


# Every subcommand, in the order `batchshift --help` lists them. Append yours.
COMMANDS: tuple[Callable[[Subparsers], None], ...] = (
    _add_api,
    _add_scheduler,
    _add_worker,
    _add_run,
    _add_emulator,
    _add_demo,
    _add_costs,
    _add_lanes,
    _add_simulate,
    _add_audit,
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="batchshift", description="Moves latency-tolerant LLM jobs to provider batch APIs."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(subparsers)
    for command_parser in subparsers.choices.values():  # for main's errors, in the command's own usage
        command_parser.set_defaults(command_parser=command_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``batchshift`` console script; returns the exit status."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse would name the top-level usage; the command's own usage says what it takes
        command_parser: argparse.ArgumentParser = args.command_parser
        command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    handler: Handler = args.handler
    try:
        return handler(args)
    except SettingsError as exc:
        print(f"batchshift: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ServerError as exc:  # a Redis too old to use, or a process batchshift started died
        print(f"batchshift: {exc}", file=sys.stderr)
        return 1
    except RedisConnectionError as exc:  # at startup; once running, the processes ride out outages
        print(f"batchshift: cannot reach Redis: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
