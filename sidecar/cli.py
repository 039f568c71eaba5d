"""Command line: argument parsing and wiring only (SPEC §2).

Exit codes: 0 clean stop, 1 bad config at start (or `check` found errors), 2 usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import __version__


def _config_dir(value: str | None) -> str:
    return value or os.environ.get("SIDECAR_CONFIG") or "./mesh-config"


def _parser() -> argparse.ArgumentParser:
    log_format = argparse.ArgumentParser(add_help=False)
    log_format.add_argument(
        "--log-format", choices=["json", "console"], default=argparse.SUPPRESS, help="log line format (default json)"
    )
    parser = argparse.ArgumentParser(prog="sidecar", description="A service-mesh sidecar proxy.", parents=[log_format])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    run = sub.add_parser("run", parents=[log_format], help="run the proxy until SIGTERM/SIGINT")
    run.add_argument(
        "-c", "--config", metavar="DIR", help="config directory (default $SIDECAR_CONFIG or ./mesh-config)"
    )
    check = sub.add_parser("check", help="validate a config directory")
    check.add_argument("-c", "--config", metavar="DIR")
    demo = sub.add_parser("demo", parents=[log_format], help="run a small mesh on loopback and show it working")
    demo.add_argument("--duration", type=float, metavar="N", help="send traffic for N seconds, print the summary, exit")
    sub.add_parser("version", help="print the version")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    fmt = getattr(args, "log_format", "json")
    if args.command == "version":
        print(f"sidecar {__version__}")
        return 0
    if args.command == "check":
        return _check(_config_dir(args.config))
    if args.command == "run":
        return _run(_config_dir(args.config), fmt)
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(duration=args.duration, log_format=fmt)
    return 2


def _check(directory: str) -> int:
    from .config.loader import ConfigError, load_directory

    try:
        snapshot = load_directory(directory)
    except ConfigError as error:
        for issue in error.issues:
            print(issue, file=sys.stderr)
        return 1
    print(
        f"{directory}: ok ({len(snapshot.files)} files, {len(snapshot.services)} services, "
        f"{len(snapshot.routes)} routes, version {snapshot.version[:12]})"
    )
    return 0


def _run(directory: str, fmt: str) -> int:
    import structlog
    import trio

    from .config.loader import ConfigError, load_directory
    from .server import Runtime
    from .telemetry.logging import configure_logging

    configure_logging(fmt)
    log = structlog.get_logger("sidecar")
    try:
        snapshot = load_directory(directory)
    except ConfigError as error:
        for issue in error.issues:
            print(issue, file=sys.stderr)
        log.error("bad_config", directory=directory, errors=len(error.issues))
        return 1
    runtime = Runtime(snapshot)
    try:
        trio.run(runtime.run)
    except OSError as exc:
        log.error("start_failed", error=str(exc))
        return 1
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
