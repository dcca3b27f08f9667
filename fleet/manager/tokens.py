"""API tokens: checking `Authorization: Bearer` headers, and first-start token files.

Several named API tokens may be valid at once (rotation); a check compares the
presented token with every one of them in constant time and returns the name,
which the audit log records instead of the token. The cluster token is for
gRPC between manager and daemons only and never opens the HTTP API.

`ensure_tokens` gives a manager on SQLite with no tokens configured a random
API token and cluster token, kept in `fleet-api.token` and
`fleet-cluster.token` beside the database file (mode 0600) and reused on
later starts. Tokens are never logged; their paths are.
"""
from __future__ import annotations

import hmac
import logging
import os
import secrets
from typing import Iterable, Optional

from fleet import errors

log = logging.getLogger(__name__)

API_TOKEN_FILE = "fleet-api.token"
CLUSTER_TOKEN_FILE = "fleet-cluster.token"


class ApiAuth:
    """Checks an HTTP Authorization header against the named API tokens."""

    def __init__(self, tokens: Iterable[tuple[str, str]], cluster_token: str = ""):
        """`tokens`: (name, token) pairs; empty tokens are ignored."""
        self._tokens = [(name, token.encode("utf-8")) for name, token in tokens if token]
        if cluster_token and any(t == cluster_token.encode("utf-8") for _, t in self._tokens):
            # config.py already refuses this; a caller that skipped it must not open HTTP to daemons.
            raise ValueError("an API token must differ from the cluster token")

    def __len__(self) -> int:
        return len(self._tokens)

    def check(self, authorization: Optional[str]) -> str:
        """The name of the token in `Authorization: Bearer <token>`; Unauthenticated if none."""
        given = _bearer_token(authorization)
        if given is None:
            raise errors.Unauthenticated("missing bearer token")
        match = self.name_of(given)
        if match is None:
            raise errors.Unauthenticated("invalid token")
        return match

    def name_of(self, token: bytes) -> Optional[str]:
        """The name of `token` among the API tokens, or None.

        Every token is compared, with no early exit, so the time taken does
        not tell which one (or how much of one) matched.
        """
        found = None
        for name, expected in self._tokens:
            if hmac.compare_digest(token, expected) and found is None:
                found = name
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


def resolve_tokens(config) -> tuple[tuple[tuple[str, str], ...], str, list[str]]:
    """(named API tokens, cluster token, token files used) for a ManagerConfig.

    Configured tokens win; on SQLite the missing ones come from (or are
    created in) the files beside the database. PostgreSQL needs both
    configured, since several managers must share them: ConfigError if not.
    """
    named, cluster = tuple(config.api_tokens), config.cluster_token
    if named and cluster:
        return named, cluster, []
    if not config.db.startswith("sqlite:///"):
        raise errors.ConfigError(["[manager] api_token and cluster_token: both must be "
                                  "configured when the database is not SQLite"])
    first = named[0][1] if named else ""
    db_path = config.db[len("sqlite:///"):]
    try:
        api, cluster, paths = ensure_tokens(db_path, first, cluster)
    except OSError as exc:
        raise errors.Unavailable(f"cannot keep token files in {token_dir(db_path)} (beside the "
                                 f"database): {exc.strerror or exc}") from exc
    named = named or (("default", api),)
    if any(hmac.compare_digest(token.encode(), cluster.encode()) for _, token in named):
        raise errors.ConfigError(["[manager] api_token: must differ from cluster_token"])
    return named, cluster, paths


def token_dir(db_path: str) -> str:
    """The directory the token files go in: the database file's, or the working dir."""
    if not db_path or db_path == ":memory:":
        return os.getcwd()
    return os.path.dirname(os.path.abspath(db_path))


def ensure_tokens(db_path: str, api_token: str = "",
                  cluster_token: str = "") -> tuple[str, str, list[str]]:
    """(api_token, cluster_token, paths): configured tokens kept, missing ones from files.

    A missing token is read from its file beside the database, or created
    there (secrets.token_urlsafe(32), mode 0600) on first start. `paths` are
    the files used, for the caller to log. Raises ConfigError for an
    unreadable or empty token file, or if both tokens end up equal.
    """
    directory = token_dir(db_path)
    paths = []
    if not api_token:
        path = os.path.join(directory, API_TOKEN_FILE)
        api_token = _load_or_create(path)
        paths.append(path)
    if not cluster_token:
        path = os.path.join(directory, CLUSTER_TOKEN_FILE)
        cluster_token = _load_or_create(path)
        paths.append(path)
    if hmac.compare_digest(api_token.encode(), cluster_token.encode()):
        raise errors.ConfigError(["[manager] api_token: must differ from cluster_token"])
    for path in paths:
        log.info("token file: %s", path)
    return api_token, cluster_token, paths


def _load_or_create(path: str) -> str:
    """The token in `path`, creating the file with a new random token if absent."""
    try:
        return _read_token(path)
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    if _create_exclusive(path, token):
        log.warning("created token file %s (mode 0600); keep it secret", path)
        return token
    return _read_token(path)   # another process created it first: use theirs


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


def _read_token(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            token = handle.read().strip()
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise errors.ConfigError([f"token file {path}: cannot read: {exc}"]) from exc
    if not token:
        raise errors.ConfigError([f"token file {path}: empty"])
    if mode & 0o077:
        log.warning("token file %s is readable by others (mode %o); chmod 600 it",
                    path, mode & 0o777)
    return token
