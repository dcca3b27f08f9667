"""ctl's command line: options, where the URL and token come from, exit statuses.

URL: --url, FLEET_URL, else http://127.0.0.1:8080. Token: --token-file,
FLEET_TOKEN_FILE, FLEET_API_TOKEN, else ./fleet-api.token (none if it does not
exist). CA for HTTPS: --ca-file or FLEET_CA_FILE. Exit 0 on success, 1 with
one line on an API error or an unreachable manager, 2 on bad usage (argparse's,
or a URL, FLEET_TIMEOUT, token or CA file that cannot work), 130 after Ctrl-C
(but `logs -f` ends with 0). Never a traceback, and never the token.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import ssl
import sys
import urllib.parse
from typing import Optional

from fleet.ctl import commands
from fleet.ctl.client import Client, CtlError
from fleet.ctl.commands import AGENT_STATUSES, HEALTHS, Ctl
from fleet.ctl.rollout import rollout

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TOKEN_FILE = "fleet-api.token"
DEFAULT_TIMEOUT = 60.0      # above the manager's operate_timeout (30 s)


def main(argv: Optional[list[str]] = None) -> int:
    """Run one ctl command; the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)   # bad usage: SystemExit(2)
    if args.command == "rollout" and (args.operation == "policy") == bool(args.label):
        parser.error("rollout policy takes no --label; rollout start|stop|restart needs "
                     "at least one --label K=V")
    if args.command == "agents" and args.node and args.label:
        parser.error("agents NODE takes no --label (labels are nodes'): "
                     "drop NODE to list the fleet's agents on labelled nodes")
    # Ctrl-C stops ctl even when it was started with SIGINT ignored (a background job
    # of a non-interactive shell inherits SIG_IGN, and Python then installs nothing).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if getattr(args, "verbose", False):
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
                            format="fleet ctl: %(message)s")
    try:
        ctl = Ctl(make_client(args), as_json=args.json)
        return args.run(ctl, args)
    except UsageError as exc:
        print(f"fleet ctl: {exc}", file=sys.stderr)
        return 2
    except CtlError as exc:
        print(f"fleet ctl: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (| head): stop quietly, and keep Python's final flush quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


class UsageError(Exception):
    """A bad URL, timeout, token or CA file from the flags or the environment: one
    line and exit 2, as argparse's own usage errors."""


def make_client(args) -> Client:
    """The API client from the flags, the environment and the defaults; UsageError
    for a value that cannot work."""
    url = args.url or os.environ.get("FLEET_URL") or DEFAULT_URL
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port                       # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"bad URL {url[:200]!r}: want http://HOST:PORT or https://HOST:PORT")
    token, hint = read_token(args.token_file)
    ca_file = args.ca_file or os.environ.get("FLEET_CA_FILE") or ""
    timeout = args.timeout or _env_seconds("FLEET_TIMEOUT", DEFAULT_TIMEOUT)
    try:
        return Client(url, token, ca_file, timeout, hint)
    except (OSError, ssl.SSLError) as exc:
        why = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
        raise UsageError(f"cannot use CA file {ca_file!r}: {why}") from None


def _env_seconds(name: str, default: float) -> float:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        return _seconds(text)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"{name}: {exc}") from None


def read_token(flag: Optional[str]) -> tuple[str, str]:
    """(token, where it came from, for a 401's message); UsageError for a token
    that no HTTP header can carry (never shown: it may be a real secret)."""
    name = flag or os.environ.get("FLEET_TOKEN_FILE")
    if not name and os.environ.get("FLEET_API_TOKEN"):
        token, where = os.environ["FLEET_API_TOKEN"].strip(), "FLEET_API_TOKEN"
    elif not name and not os.path.exists(DEFAULT_TOKEN_FILE):
        return "", ("no token: pass --token-file, set FLEET_API_TOKEN, or run where "
                    "fleet-api.token is")
    else:
        name = name or DEFAULT_TOKEN_FILE
        try:
            with open(name, encoding="utf-8") as handle:
                token, where = handle.read().strip(), name
        except (OSError, UnicodeError) as exc:
            raise CtlError(f"cannot read token file {name}: {getattr(exc, 'strerror', exc)}") \
                from None
    if any(not " " < char <= "~" for char in token):
        raise UsageError(f"the token in {where} has a space, a line break or a character "
                         "that is not ASCII; a token is one word of printable ASCII")
    return token, f"token from {where}"


# ---- the parser ----

def _lines(text: str) -> int:
    return _int_in(text, 1, 1000)


def _positive(text: str) -> int:
    return _int_in(text, 1, 10**9)


def _int_in(text: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"must be from {low} to {high}, not {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 3600, not {text}")
    return value


def _label(text: str) -> str:
    if "=" not in text or text.startswith("="):
        raise argparse.ArgumentTypeError(f"want KEY=VALUE, not {text!r}")
    return text


def _common(default) -> argparse.ArgumentParser:
    """The options every command takes, before or after its name."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=default, help=f"manager URL (FLEET_URL; {DEFAULT_URL})")
    common.add_argument("--token-file", default=default,
                        help="API token file (FLEET_TOKEN_FILE; else FLEET_API_TOKEN, "
                             "else ./fleet-api.token)")
    common.add_argument("--ca-file", default=default, help="CA of an HTTPS manager (FLEET_CA_FILE)")
    common.add_argument("--timeout", type=_seconds, default=default,
                        help=f"seconds per request (FLEET_TIMEOUT; {DEFAULT_TIMEOUT:g})")
    common.add_argument("--json", action="store_true", default=default,
                        help="print the API's JSON instead of tables")
    common.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="log each request on stderr")
    return common


def build_parser() -> argparse.ArgumentParser:
    """ctl's argparse parser; each command's function is in `run`."""
    parser = argparse.ArgumentParser(prog="fleet ctl", parents=[_common(None)],
                                     description="Drive a fleet manager over its HTTP API.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = [_common(argparse.SUPPRESS)]

    def command(name: str, run, help_text: str, **kw) -> argparse.ArgumentParser:
        made = sub.add_parser(name, parents=common, help=help_text, description=help_text, **kw)
        made.set_defaults(run=run)
        return made

    command("status", commands.status, "the fleet at a glance (overview)")
    nodes = command("nodes", commands.nodes, "list nodes")
    nodes.add_argument("--status", choices=("online", "offline"))
    nodes.add_argument("--label", action="append", type=_label, metavar="K=V")
    _add_agents(command("agents", commands.agents, "list a node's agents, or the fleet's"))
    for operation in ("start", "stop", "restart"):
        made = command(operation, commands.operate, f"{operation} an agent")
        _node_agent(made)
    _add_logs(command("logs", commands.logs, "an agent's log lines"))
    metrics = _node_agent(command("metrics", commands.metrics, "an agent's resource samples"))
    metrics.add_argument("--duration", type=lambda t: _int_in(t, 1, 86400), default=300,
                         help="seconds of history (default 300)")
    _add_history(command("events", commands.events, "events, newest first"),
                 command("audit", commands.audit, "operations done, newest first"))
    command("reload", commands.reload, "make a node reread its config").add_argument(
        "node", metavar="NODE")
    _add_rollout(command("rollout", rollout, "apply an operation to the nodes of a selector, "
                         "or a held policy's newest version to its pinned nodes"))
    command("policies", commands.policies, "list policies")
    return parser


def _add_agents(agents: argparse.ArgumentParser) -> None:
    agents.add_argument("node", nargs="?", metavar="NODE")
    agents.add_argument("--status", choices=AGENT_STATUSES)
    agents.add_argument("--health", choices=HEALTHS)
    agents.add_argument("--type", help="only agents of this type")
    agents.add_argument("--label", action="append", type=_label, metavar="K=V",
                        help="only agents on nodes with this label (fleet-wide list)")


def _add_history(events: argparse.ArgumentParser, audit: argparse.ArgumentParser) -> None:
    events.add_argument("node", nargs="?", metavar="NODE")
    events.add_argument("agent", nargs="?", metavar="AGENT")
    events.add_argument("--kind")
    audit.add_argument("--node")
    for parser in (events, audit):
        parser.add_argument("-n", "--limit", type=_positive, default=100, help="default 100")


def _node_agent(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("node", metavar="NODE")
    parser.add_argument("agent", metavar="AGENT")
    return parser


def _add_logs(logs: argparse.ArgumentParser) -> None:
    _node_agent(logs)
    logs.add_argument("-n", "--lines", type=_lines, default=100,
                      help="how many of the last lines (1..1000, default 100)")
    logs.add_argument("--grep", help="only lines containing this text")
    logs.add_argument("-f", "--follow", action="store_true",
                      help="then print new lines as they come, until Ctrl-C")


def _add_rollout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("operation", choices=("restart", "start", "stop", "policy"),
                        help="policy: move a held policy's pinned nodes to its newest version")
    parser.add_argument("agent", metavar="AGENT|POLICY")
    parser.add_argument("--label", action="append", type=_label, default=[], metavar="K=V",
                        help="nodes with this label (repeat to require several); "
                             "required, except for policy")
    parser.add_argument("--max-parallel", type=lambda t: _int_in(t, 1, 1000), default=5,
                        help="nodes at a time, 1..1000 (default 5)")
    parser.add_argument("--max-failures", type=lambda t: _int_in(t, 0, 100000), default=1,
                        help="failed nodes tolerated; one more stops the rollout (default 1; "
                             "0: stop at the first failure)")
    parser.add_argument("--wait-seconds", type=lambda t: _int_in(t, 1, 3600),
                        help="how long each node may take to run healthy, 1..3600 "
                             "(the manager's default, 60)")
