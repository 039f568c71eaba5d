"""Command line: argument parsing and wiring only (docs: reference/cli.md).

Exit codes: 0 clean stop, 1 bad config at start (or `check` found errors, or `iptables` failed), 2 usage error.
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
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument(
        "-c", "--config", metavar="DIR", help="config directory (default $SIDECAR_CONFIG, else ./mesh-config)"
    )
    sub.add_parser("run", parents=[log_format, config], help="run the proxy until SIGTERM/SIGINT")
    sub.add_parser(
        "check",
        parents=[config],
        help="validate a config directory",
        description="Validate a config directory: every problem is printed on stderr as "
        "FILE:LINE: field.path: message, and the exit code is 1 if there is any.",
    )
    certs = sub.add_parser("certs", help="development PKI: a mesh CA and SPIFFE workload certificates")
    certs_sub = certs.add_subparsers(dest="certs_command", metavar="ACTION")
    certs_sub.required = True
    init = certs_sub.add_parser("init", help="create a mesh CA (ca.pem, ca-key.pem)")
    init.add_argument("--trust-domain", required=True, metavar="TD")
    init.add_argument("--out", required=True, metavar="DIR")
    init.add_argument("--validity", default="8760h", metavar="DURATION", help="default 8760h (a year)")
    issue = certs_sub.add_parser("issue", help="issue a workload cert and key (cert.pem, key.pem, ca.pem)")
    issue.add_argument("--ca", required=True, metavar="DIR", help="directory holding ca.pem and ca-key.pem")
    issue.add_argument("--id", required=True, metavar="SPIFFE_ID", help="spiffe://TD/ns/NS/sa/SA")
    issue.add_argument("--out", required=True, metavar="DIR")
    issue.add_argument("--validity", default="24h", metavar="DURATION", help="default 24h")
    iptables = sub.add_parser(
        "iptables",
        parents=[config],
        help="install the nat rules of transparent capture in this network namespace (needs CAP_NET_ADMIN)",
        description="Install, in the current network namespace, the nat rules built from the Sidecar's `capture` "
        "section: inbound TCP to every port but the admin port, the inbound listener's own and "
        "capture.exclude_inbound_ports is redirected to the inbound listener (only with an inbound section); "
        "outbound TCP from every UID but capture.proxy_uid, except to loopback, capture.exclude_outbound_ports "
        "and capture.exclude_outbound_cidrs, is redirected to the outbound listener. The rules live in the "
        "chains SIDECAR_INBOUND and SIDECAR_OUTPUT, hooked once from PREROUTING (only with an inbound section) "
        "and OUTPUT; running it again rewrites them and leaves one copy. IPv4 always, IPv6 too when the "
        "namespace has a global IPv6 address. Applied with iptables-restore of the backend (legacy or nft) "
        "the namespace already uses. "
        "Needs CAP_NET_ADMIN: in Kubernetes, run it as an init container with the NET_ADMIN capability. "
        "Exit code 0 on success, 1 on failure or a bad config.",
    )
    iptables.add_argument(
        "--dry-run",
        action="store_true",
        help="print, in iptables-restore format, exactly what would be applied given the current table "
        "(one section per address family, headed by a comment naming the restore command), and change nothing",
    )
    iptables.add_argument(
        "--clean",
        action="store_true",
        help="remove the chains and every hook into them instead (the config is not read); "
        "nothing to remove is not an error",
    )
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
    if args.command == "certs":
        return _certs(args)
    if args.command == "iptables":
        return _iptables(_config_dir(args.config), dry_run=args.dry_run, clean=args.clean)
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(duration=args.duration, log_format=fmt)
    return 2


def _certs(args: argparse.Namespace) -> int:
    import datetime
    from pathlib import Path

    from .certs import CertError, init_ca, issue_workload
    from .config import parse_duration

    try:
        validity = datetime.timedelta(seconds=parse_duration(args.validity))
    except ValueError as exc:
        print(f"--validity: {exc}", file=sys.stderr)
        return 2
    try:
        if args.certs_command == "init":
            path = init_ca(args.trust_domain, Path(args.out), validity=validity)
        else:
            path = issue_workload(Path(args.ca), args.id, Path(args.out), validity=validity)
    except CertError as exc:
        print(f"sidecar certs: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


def _iptables(directory: str, *, dry_run: bool, clean: bool) -> int:
    from .capture.iptables import run
    from .config.loader import ConfigError, load_directory

    sidecar = None
    if not clean:
        try:
            sidecar = load_directory(directory).sidecar
        except ConfigError as error:
            for issue in error.issues:
                print(issue, file=sys.stderr)
            return 1
    return run(
        sidecar,
        dry_run=dry_run,
        clean=clean,
        out=lambda line: print(line, flush=True),
        err=lambda line: print(line, file=sys.stderr, flush=True),
    )


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
    import trio

    from .config.loader import ConfigError, load_directory
    from .logger import get_logger
    from .server import Runtime
    from .telemetry.logging import configure_logging

    configure_logging(fmt)
    log = get_logger("sidecar")
    try:
        snapshot = load_directory(directory)
    except ConfigError as error:
        for issue in error.issues:
            print(issue, file=sys.stderr)
        log.error("bad_config", directory=directory, errors=len(error.issues))
        return 1
    runtime = Runtime(snapshot)
    failures: list[str] = []
    try:
        trio.run(runtime.run)
    except* OSError as group:  # a port taken, an address not ours: one line each, no traceback
        failures = [error.strerror or str(error) for error in group.exceptions if isinstance(error, OSError)]
    for failure in failures:
        print(f"sidecar: cannot start: {failure}", file=sys.stderr)
        log.error("start_failed", error=failure)
    if failures:
        return 1
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
