"""The `platform-apply` console script: parse, run one subcommand, exit with its code.

Usage errors exit 64 (argparse's own 2 would read as the contract's
tool_error); an unreachable Temporal server, or one that stops answering,
exits 2 with a one-line message.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, NoReturn

from temporalio.service import RPCError

import platformctl.dependency_warnings  # noqa: F401  (first of ours: before asyncssh loads)
from platformctl.cli import apply, approve, doctor, locks, logs, plan, reapply, reject, rollback, sign, status
from platformctl.cli.common import EXIT_UNREACHABLE, EXIT_USAGE, CliError, one_line
from platformctl.config import Settings

PROG = "platform-apply"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Start, approve, reject, roll back and inspect platform applies (ApplyWorkflow, "
        "RollbackWorkflow on Temporal). "
        "Configured by the worker's environment: TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, PLATFORM_TASK_QUEUE, "
        "PLATFORM_ROOT, TEMPORAL_TLS_*, TEMPORAL_API_KEY, PLATFORM_APPROVAL_KEY_FILE.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (plan, apply, approve, reject, rollback, status, reapply, locks, doctor, logs, sign):
        module.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command: Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]] = args.run
    try:
        settings = Settings.from_env()
    except ValueError as e:  # a setting the worker would refuse too
        print(f"{PROG}: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(command(args, settings))
    except CliError as e:
        print(f"{PROG}: {e.message}", file=sys.stderr)
        return e.code
    except RPCError as e:
        print(f"{PROG}: Temporal refused or did not answer: {one_line(e.message)}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted (an apply already started goes on)", file=sys.stderr)
        return 130


def console() -> NoReturn:
    """The console script: main(), then exit without interpreter teardown, where the
    Temporal client's Rust threads can abort the process (temporalio/sdk-python#300)."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
