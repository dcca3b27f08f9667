"""API tokens: checking `Authorization: Bearer` headers, and first-start token files.

Several named API tokens may be valid at once (rotation); a check compares the
presented token with every one of them in constant time and returns its name,
which the audit log records instead of the token, and its scope: `read` (every
GET), `operate` (also operate and sync), `admin` (also node delete). A token
without a scope (`api_token`, the generated one, today's `[manager.api_tokens]`
strings) is admin. The cluster token is for gRPC between manager and daemons
only and never opens the HTTP API.

A manager on SQLite with no tokens configured gets a random API token and
cluster token, kept in `fleet-api.token` and `fleet-cluster.token` beside the
database file (mode 0600) and reused on later starts: `resolve_tokens` reads
them or makes them in memory before anything starts, `create_token_files`
writes the new ones once the ports are bound. Tokens are never logged; their
paths are.
"""
from __future__ import annotations

import dataclasses
import hmac
import logging
import os
import secrets
from typing import Iterable, NamedTuple, Optional

from fleet import errors
from fleet.config import API_SCOPES, ApiToken

log = logging.getLogger(__name__)

API_TOKEN_FILE = "fleet-api.token"
CLUSTER_TOKEN_FILE = "fleet-cluster.token"


class Caller(NamedTuple):
    """Who sent a request: the name and scope of its API token (never the token)."""

    name: str
    scope: str

    def require(self, needed: str) -> None:
        """PermissionDenied unless this scope reaches `needed` (read < operate < admin)."""
        if rank(self.scope) < rank(needed):
            raise errors.PermissionDenied(
                f"token {self.name!r} has scope {self.scope}; this needs {needed}")


def rank(scope: str) -> int:
    """The place of `scope` in API_SCOPES; ValueError for anything else."""
    if scope not in API_SCOPES:
        raise ValueError(f"unknown scope {scope!r}: not one of {', '.join(API_SCOPES)}")
    return API_SCOPES.index(scope)


class ApiAuth:
    """Checks an HTTP Authorization header against the named API tokens."""

    def __init__(self, tokens: Iterable[tuple[str, ...]], cluster_token: str = ""):
        """`tokens`: ApiToken (name, token, scope) or (name, token) admin pairs;
        empty tokens are ignored. ValueError for a token equal to the cluster
        token or another one, or an unknown scope (config.py refuses them first)."""
        entries = [ApiToken(*entry) for entry in tokens if entry[1]]
        for entry in entries:
            rank(entry.scope)
        self._tokens = [(Caller(e.name, e.scope), e.token.encode("utf-8")) for e in entries]
        given = [token for _, token in self._tokens]
        if len(set(given)) != len(given):
            raise ValueError("two API tokens are equal: whose name and scope would it be?")
        if cluster_token and cluster_token.encode("utf-8") in given:
            # A caller that skipped config.py's check must not open HTTP to daemons.
            raise ValueError("an API token must differ from the cluster token")

    def __len__(self) -> int:
        return len(self._tokens)

    def check(self, authorization: Optional[str]) -> Caller:
        """The name and scope of the token in `Authorization: Bearer <token>`;
        Unauthenticated if there is none or it is not one of the API tokens."""
        given = _bearer_token(authorization)
        if given is None:
            raise errors.Unauthenticated("missing bearer token")
        match = self.caller_of(given)
        if match is None:
            raise errors.Unauthenticated("invalid token")
        return match

    def caller_of(self, token: bytes) -> Optional[Caller]:
        """The name and scope of `token` among the API tokens, or None.

        Every token is compared, with no early exit, so the time taken does
        not tell which one (or how much of one) matched.
        """
        found = None
        for caller, expected in self._tokens:
            if hmac.compare_digest(token, expected) and found is None:
                found = caller
        return found


def _bearer_token(authorization: Optional[str]) -> Optional[bytes]:
    """The raw bytes after `Bearer ` (scheme case-insensitive), or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    # WSGI headers are latin-1 decoded: this gives back the bytes the client sent.
    return token.encode("latin-1", "replace")


@dataclasses.dataclass(frozen=True)
class ManagerTokens:
    """The tokens a manager runs with, and the token files a first start still has to write."""
    api: tuple[ApiToken, ...]                   # (name, token, scope) for the HTTP API
    cluster: str                                # the gRPC token shared with daemons
    to_create: tuple[tuple[str, str], ...] = ()  # (path, token): made in memory, not yet written
    paths: tuple[str, ...] = ()                 # every token file used, to log at start


def resolve_tokens(config) -> ManagerTokens:
    """The tokens of a ManagerConfig, reading the token files but writing nothing.

    Configured tokens win; on SQLite a missing one is read from its file beside
    the database, or made in memory for create_token_files() to write once the
    ports are bound (a start that fails earlier leaves no file behind).
    PostgreSQL needs both configured (config.py refuses it first). Raises
    ConfigError for an unreadable or empty token file, or equal tokens.
    """
    named, cluster = tuple(config.api_tokens), config.cluster_token
    if named and cluster:
        return ManagerTokens(named, cluster)
    if not config.db.startswith("sqlite:///"):
        raise errors.ConfigError(["[manager] api_token and cluster_token: both must be "
                                  "configured when the database is not SQLite"])
    directory = token_dir(config.db[len("sqlite:///"):])
    to_create, paths = [], []
    if not named:
        path = os.path.join(directory, API_TOKEN_FILE)
        named = (ApiToken("default", _existing_or_new(path, "api_token", to_create)),)
        paths.append(path)
    if not cluster:
        path = os.path.join(directory, CLUSTER_TOKEN_FILE)
        cluster = _existing_or_new(path, "cluster_token", to_create)
        paths.append(path)
    if any(hmac.compare_digest(entry[1].encode(), cluster.encode()) for entry in named):
        raise errors.ConfigError(["[manager] api_token: must differ from cluster_token"])
    return ManagerTokens(named, cluster, tuple(to_create), tuple(paths))


def _existing_or_new(path: str, key: str, to_create: list[tuple[str, str]]) -> str:
    """The token in `path`, or a new random one, appended to `to_create` with its path."""
    try:
        return _read_token(path, key)
    except FileNotFoundError:
        token = secrets.token_urlsafe(32)
        to_create.append((path, token))
        return token


def create_token_files(tokens: ManagerTokens) -> None:
    """Write the token files a first start made in memory (mode 0600); log every path.

    Raises Unavailable when a file cannot be written, or when another manager
    starting at the same time wrote a different token first (this one already
    serves with its own: starting again reads theirs).
    """
    for path, token in tokens.to_create:
        try:
            created = _create_exclusive(path, token)
        except OSError as exc:
            raise errors.Unavailable(f"cannot keep token files in {os.path.dirname(path)} "
                                     f"(beside the database): {exc.strerror or exc}") from exc
        if created:
            log.warning("created token file %s (mode 0600); keep it secret", path)
        elif not hmac.compare_digest(_read_token(path, "").encode(), token.encode()):
            raise errors.Unavailable(f"token file {path} was created by another manager "
                                     f"starting at the same time; start again to use it")
    for path in tokens.paths:
        log.info("token file: %s", path)


def token_dir(db_path: str) -> str:
    """The directory the token files go in: the database file's."""
    return os.path.dirname(os.path.abspath(db_path))


def _create_exclusive(path: str, token: str) -> bool:
    """Write `token` to a new `path`; False if it already exists.

    The token is written to a private temporary file created 0600 with
    O_EXCL (never readable by others, not even briefly), then hard-linked
    into place: the link fails if the file exists, and no reader ever sees
    a half-written file.
    """
    temporary = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(token + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        except OSError:                      # a file system without hard links
            return _create_in_place(path, token)
        return True
    finally:
        os.unlink(temporary)


def _create_in_place(path: str, token: str) -> bool:
    """O_EXCL creation of `path` itself (a racing reader may briefly see it empty)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(token + "\n")
    return True


def _read_token(path: str, key: str) -> str:
    """The token in an existing token file; FileNotFoundError if there is none.

    An unreadable or empty file is a ConfigError naming `key`, the setting it
    stands in for: it is reported, not silently replaced.
    """
    where = f"[manager] {key}: token file" if key else "token file"
    try:
        with open(path, encoding="utf-8") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            token = handle.read().strip()
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise errors.ConfigError([f"{where} {path}: cannot read: {why}"]) from exc
    if not token:
        raise errors.ConfigError([f"{where} {path} is empty (delete it to have a new token "
                                  f"made, or set {key or 'the token'})"])
    if mode & 0o077:
        log.warning("token file %s is readable by others (mode %o); chmod 600 it",
                    path, mode & 0o777)
    return token
