"""The [manager] section and its named, scoped API tokens."""
from __future__ import annotations

import dataclasses
import importlib
from typing import TYPE_CHECKING, Any, NamedTuple

from fleet.config.reader import Reader, TLSConfig, read_tls, read_token, read_token_file
from fleet.values import (to_address, to_bool, to_choice, to_db_url, to_int, to_nonempty_str,
                          to_seconds, to_str)

if TYPE_CHECKING:
    from fleet.config import Config


API_SCOPES = ("read", "operate", "admin")   # least to most (DESIGN.md "Security")


class ApiToken(NamedTuple):
    """One named HTTP API token; a (name, token) pair without a scope is admin."""

    name: str                          # what the audit log records, never the token
    token: str
    scope: str = "admin"               # one of API_SCOPES


@dataclasses.dataclass(frozen=True)
class ManagerConfig:
    http: str = "127.0.0.1:8080"
    grpc: str = "0.0.0.0:9090"
    db: str = "sqlite:///fleet.db"
    offline_after: float = 90.0
    daemon_timeout: float = 10.0       # deadline of each call to a daemon but operate
    operate_timeout: float = 30.0      # deadline of an operate (a stop may take stop_timeout)
    http_request_timeout: float = 10.0  # a request must arrive whole within this
    http_max_connections: int = 1000   # open HTTP connections at most; more wait
    events_retention: float = 604800.0  # seconds agent events are kept
    metrics_public: bool = False       # /metrics without a token
    node_metrics_retention: float = 604800.0  # seconds node metrics' one-minute rollups are kept
    ingest_queue: int = 20_000         # states waiting for the writer; past it, RESOURCE_EXHAUSTED
    api_tokens: tuple[ApiToken, ...] = ()   # (name, token, scope)
    cluster_token: str = ""
    tls: TLSConfig | None = None
    lease_ttl: float = 30.0            # seconds a duty's lease (rollouts) outlives its holder
    workers: int = 1                   # manager processes sharing both ports (SO_REUSEPORT)


MAX_WORKERS = 64


def read_manager(table: Any, problems: list[str]) -> ManagerConfig:
    r = Reader("manager", table, problems)
    api_token, cluster_token = read_token(r, "api_token"), read_token(r, "cluster_token")
    tokens = [ApiToken("default", api_token)] if api_token else []
    tokens += read_api_tokens(r, tokens, cluster_token)
    config = ManagerConfig(
        http=r.get("http", ManagerConfig.http, to_address),
        grpc=r.get("grpc", ManagerConfig.grpc, to_address),
        db=r.get("db", ManagerConfig.db, to_db_url),
        offline_after=r.get("offline_after", 90.0, lambda v: to_seconds(v, 0.1)),
        daemon_timeout=r.get("daemon_timeout", ManagerConfig.daemon_timeout,
                             lambda v: to_seconds(v, 0.1)),
        operate_timeout=r.get("operate_timeout", ManagerConfig.operate_timeout,
                              lambda v: to_seconds(v, 0.1)),
        http_request_timeout=r.get("http_request_timeout", ManagerConfig.http_request_timeout,
                                   lambda v: to_seconds(v, 0.1)),
        http_max_connections=r.get("http_max_connections", ManagerConfig.http_max_connections,
                                   lambda v: to_int(v, 1, 100_000)),
        events_retention=r.get("events_retention", ManagerConfig.events_retention,
                               lambda v: to_seconds(v, 60)),
        metrics_public=r.get("metrics_public", False, to_bool),
        node_metrics_retention=r.get("node_metrics_retention",
                                     ManagerConfig.node_metrics_retention,
                                     lambda v: to_seconds(v, 3600)),
        ingest_queue=r.get("ingest_queue", ManagerConfig.ingest_queue,
                           lambda v: to_int(v, 1, 10_000_000)),
        api_tokens=tuple(tokens),
        cluster_token=cluster_token,
        tls=read_tls(r, ("cert", "key", "client_ca")),
        workers=r.get("workers", 1, lambda v: to_int(v, 1, MAX_WORKERS)),
        lease_ttl=r.get("lease_ttl", ManagerConfig.lease_ttl, lambda v: to_seconds(v, 3)),
    )
    r.check_unknown()
    if api_token and api_token == cluster_token:
        r.fail("api_token", "must differ from cluster_token")
    return config


def read_api_tokens(parent: Reader, before: list[ApiToken], cluster_token: str
                    ) -> list[ApiToken]:
    """`[manager.api_tokens]`: `name = "TOKEN"` or `"file:/path"` (admin), or
    `name = { file = "/path", scope = "read" }` (`token = "TOKEN"` instead of file).

    Each token must differ from the cluster token and from every other one
    (`before` included): two names for one token would make its name and scope
    ambiguous.
    """
    parent.seen.add("api_tokens")
    r = Reader("manager.api_tokens", parent.table.get("api_tokens", {}), parent.problems)
    names = {entry.token: entry.name for entry in before}
    found = []
    for name, spec in sorted(r.table.items()):
        r.seen.add(name)
        entry = _api_token(r, name, spec)
        if not entry.token:
            continue
        if entry.token == cluster_token:
            r.fail(name, "must differ from cluster_token")
        elif entry.token in names:
            r.fail(name, f"same token as {names[entry.token]}")
        names.setdefault(entry.token, name)
        found.append(entry)
    return found


def _api_token(r: Reader, name: str, spec: Any) -> ApiToken:
    """One entry of `[manager.api_tokens]`; its token is "" when it is bad."""
    if "\x00" in name:
        r.fail(repr(name), "contains a NUL byte")
    elif isinstance(spec, dict):
        return _scoped_token(Reader(r.section, spec, r.problems, f"{name}."), name)
    elif not isinstance(spec, str) or not spec:
        r.fail(name, 'must be a token, "file:/path", or { file = "/path", scope = "read" }')
    elif spec.startswith("file:"):
        return ApiToken(name, read_token_file(r, name, spec[5:]))
    else:
        return ApiToken(name, r.get(name, "", to_str))
    return ApiToken(name, "")


def _scoped_token(r: Reader, name: str) -> ApiToken:
    """One `{ file = ... | token = ..., scope = ... }` table; token "" when it is bad."""
    if "scope" not in r.table:
        r.fail("scope", f"required: one of {', '.join(API_SCOPES)}")
    scope = r.get("scope", "", to_choice(API_SCOPES))
    path = r.get("file", "", to_nonempty_str)
    token = r.get("token", "", to_nonempty_str)
    r.check_unknown()
    if ("file" in r.table) == ("token" in r.table):
        r.fail("file", "set file or token, not both" if "file" in r.table
               else "required (or token)")
        return ApiToken(name, "", scope)
    if path:
        token = read_token_file(r, "file", path)
    return ApiToken(name, token if scope else "", scope)


def check_manager_workers(config: Config, problems: list[str]) -> None:
    """`workers` > 1 runs manager processes only: `--role all` keeps one process, so
    its local daemon and its manager share fate (DESIGN.md "Scale")."""
    if config.role == "all" and config.manager.workers > 1:
        problems.append(f"[manager] workers: {config.manager.workers} needs --role manager; "
                        "--role all runs one manager process (set workers = 1)")


def check_manager_database(config: Config, problems: list[str]) -> None:
    """PostgreSQL needs its driver, and both tokens configured: the managers sharing
    the database must share them, so none may make its own beside a database file."""
    manager = config.manager
    if config.role not in ("manager", "all") or not manager.db.startswith("postgres"):
        return
    try:
        importlib.import_module("psycopg2")
    except ImportError:
        problems.append("[manager] db: PostgreSQL needs the psycopg2 driver, which is not "
                        "installed (pip install psycopg2-binary; a fleet.pyz carries it "
                        "when built with --with-postgres)")
    if not manager.api_tokens:
        problems.append("[manager] api_token: required with a PostgreSQL database")
    if not manager.cluster_token:
        problems.append("[manager] cluster_token: required with a PostgreSQL database")
