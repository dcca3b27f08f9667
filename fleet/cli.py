"""Command line: parse flags, load the config, run a role until SIGTERM/SIGINT
(a daemon rereads the config, with the same flags, on SIGHUP);
or, as `fleet ctl ...`, hand the rest to fleet.ctl (a client of the HTTP API).

Exit status: 2 for a bad flag or config (one stderr line per problem, nothing
started), 1 for a runtime failure (port in use, state_dir locked, database
unreachable), 0 after SIGTERM/SIGINT; a second SIGINT forces exit (130).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

import fleet
from fleet import config as configuration
from fleet import logsetup
from fleet.errors import ConfigError, FleetError

log = logging.getLogger("fleet")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleet", description=fleet.__doc__)
    parser.add_argument("--version", action="version", version=f"fleet {fleet.__version__}")
    parser.add_argument("--role", choices=("daemon", "manager", "all"),
                        default=os.environ.get("FLEET_ROLE") or None)
    parser.add_argument("--config", default=os.environ.get("FLEET_CONFIG") or None,
                        help="TOML config file")
    manager = parser.add_argument_group("manager")
    manager.add_argument("--http", help="HTTP API address, HOST:PORT")
    manager.add_argument("--grpc", help="manager gRPC address, HOST:PORT")
    manager.add_argument("--db", help="sqlite:///PATH or postgresql://...")
    manager.add_argument("--workers", help="manager processes sharing both ports")
    manager.add_argument("--worker-of", dest="worker_of", type=int, default=0,
                         help=argparse.SUPPRESS)   # set by the parent of workers
    manager.add_argument("--writer-fd", dest="writer_fd", type=int, default=0,
                         help=argparse.SUPPRESS)   # likewise, on SQLite (store.relay)
    daemon = parser.add_argument_group("daemon")
    daemon.add_argument("--manager", action="append", help="manager address (repeatable)")
    daemon.add_argument("--listen", help="daemon gRPC address, HOST:PORT")
    daemon.add_argument("--advertise", help="the address the manager dials")
    daemon.add_argument("--state-dir", dest="state_dir")
    daemon.add_argument("--node-id", dest="node_id")
    daemon.add_argument("--insecure", action="store_true", default=None,
                        help="allow a non-loopback listen address without a cluster token")
    common = parser.add_argument_group("common")
    common.add_argument("--log-level", dest="log_level")
    common.add_argument("--log-format", dest="log_format")
    return parser


def load_config(args: argparse.Namespace) -> configuration.Config:
    flags = {name: getattr(args, name, None) for name in configuration.FLAG_KEYS}
    if args.manager:
        flags["manager"] = ",".join(args.manager)
    return configuration.load(args.role, args.config, flags)


class Shutdown:
    """Signal handlers only set a flag; a second SIGINT forces exit."""

    def __init__(self):
        self.requested = threading.Event()
        self._interrupts = 0

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            self._interrupts += 1
            if self._interrupts > 1:
                os._exit(130)
        self.requested.set()

    def wait(self) -> None:
        while not self.requested.wait(1.0):
            pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["ctl"]:
        from fleet.ctl.main import main as ctl  # the HTTP client: neither role is loaded
        return ctl(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.role:
        parser.print_usage(sys.stderr)
        print("fleet: error: --role is required (daemon, manager or all)", file=sys.stderr)
        return 2
    try:
        config = load_config(args)
    except ConfigError as exc:
        return config_errors(exc)
    logsetup.configure(config.log_level, config.log_format)
    shutdown = Shutdown()
    shutdown.install()
    from fleet import roles  # imports only what the role needs
    try:
        if config.role == "manager" and (args.worker_of or config.manager.workers > 1):
            return roles.run_workers(config, shutdown.requested, argv, args.worker_of,
                                     args.writer_fd)
        return roles.run(config, shutdown.wait, lambda: load_config(args))
    except ConfigError as exc:   # a token file beside the database, read before anything starts
        return config_errors(exc)
    except (FleetError, OSError) as exc:
        log.error("%s", getattr(exc, "message", None) or exc)
        return 1


def config_errors(exc: ConfigError) -> int:
    """Print one `config error:` line per problem; the exit status 2."""
    for problem in exc.problems:
        print(f"config error: {problem}", file=sys.stderr)
    return 2
