"""The ``batchshift`` command: parses arguments, builds settings once, and wires the parts.

Each subcommand is one ``_add_<name>(subparsers)`` function that declares its arguments and sets
``handler`` (a function of the parsed arguments returning an exit code); adding a command is one
function plus one entry in ``COMMANDS``. Handlers only wire: decisions live in the packages.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from config.logging import configure_logging
from config.settings import Settings, SettingsError, load_settings

Subparsers = Any  # argparse's _SubParsersAction is private; its type is not worth importing.
Handler = Callable[[argparse.Namespace], int]

# Exit status for a bad setting or bad usage (argparse's own convention).
EXIT_USAGE = 2


def bootstrap() -> Settings:
    """Load settings (raising SettingsError) and configure logging from them; every handler starts here."""
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    return settings


# -- batchshift api ---------------------------------------------------------------------------


def _run_api(args: argparse.Namespace) -> int:
    import uvicorn

    from scheduler.api.app import create_app

    settings = bootstrap()
    # log_config=None keeps our logging; the request-id middleware logs each request instead of
    # uvicorn's access log, with the request id bound.
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
    parser = subparsers.add_parser("api", help="serve the HTTP API (intake, job status)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    parser.set_defaults(handler=_run_api)


# Every subcommand, in the order `batchshift --help` lists them. Append yours.
COMMANDS: tuple[Callable[[Subparsers], None], ...] = (_add_api,)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="batchshift", description="Moves latency-tolerant LLM jobs to provider batch APIs."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``batchshift`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except SettingsError as exc:
        print(f"batchshift: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
