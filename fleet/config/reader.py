"""Reading one TOML table: converted values, problems named `[section] key: why`,
tokens and token files, and TLS file sets (checked to load)."""
from __future__ import annotations

import dataclasses
import ssl
from typing import Any, Callable

from fleet.values import to_str


class Reader:
    """Reads one TOML table, collecting problems named `section key: why`."""

    def __init__(self, section: str, table: Any, problems: list[str], prefix: str = ""):
        self.section = section
        self.prefix = prefix           # before every key: "viewer." in [manager.api_tokens]
        self.problems = problems
        self.seen: set[str] = set()
        if not isinstance(table, dict):
            self.fail("", "not a table")
            table = {}
        self.table = table

    def fail(self, key: str, why: str) -> None:
        # A top-level key is named alone: `log_level: ...`, not `[] log_level: ...`.
        key = self.prefix + key
        where = f"[{self.section}] {key}".rstrip() if self.section else key
        self.problems.append(f"{where}: {why}")

    def get(self, key: str, default: Any, convert: Callable[[Any], Any]) -> Any:
        """The converted value of key, or default when absent or invalid."""
        self.seen.add(key)
        if key not in self.table:
            return default
        try:
            return convert(self.table[key])
        except (ValueError, TypeError, OverflowError) as exc:   # inf, 10**400 in TOML
            self.fail(key, str(exc))
            return default

    def check_unknown(self) -> None:
        for key in sorted(set(self.table) - self.seen):
            self.fail(key, "unknown key")


def read_token(reader: Reader, key: str) -> str:
    """`key` inline or `key_file` = path holding it (whitespace stripped)."""
    token = reader.get(key, "", to_str)
    path = reader.get(f"{key}_file", "", to_str)
    if token and path:
        reader.fail(key, f"set {key} or {key}_file, not both")
    if path:
        token = read_token_file(reader, f"{key}_file", path)
    return token


def read_token_file(reader: Reader, key: str, path: str) -> str:
    """The token in the file at `path`, whitespace stripped; "" and a problem named
    `key` when it cannot be read, is not UTF-8 text, or is empty."""
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.read().strip()
    except OSError as exc:
        reader.fail(key, f"cannot read {path}: {exc.strerror}")
        return ""
    except UnicodeError:
        reader.fail(key, f"{path} is not UTF-8 text")
        return ""
    if not token:
        reader.fail(key, f"{path} is empty")
    return token


# ---- sections ----


@dataclasses.dataclass(frozen=True)
class TLSConfig:
    cert: str = ""
    key: str = ""
    ca: str = ""            # daemon: the CA that signed the manager's certificate
    client_ca: str = ""     # manager: the CA that signs daemons' certificates (client
                            # and server: the manager dials daemons trusting it too)
    server_name: str = ""


def read_tls(parent: Reader, keys: tuple[str, ...]) -> TLSConfig | None:
    """The `[<section>.tls]` table: cert and key required, every PEM file usable.

    Files are checked here so that a missing, unreadable or mismatched one is a
    config error naming its key (exit 2), not a traceback or a vague "cannot
    listen" from the TLS library later.
    """
    parent.seen.add("tls")
    if "tls" not in parent.table:
        return None
    reader = Reader(f"{parent.section}.tls", parent.table["tls"], parent.problems)
    values = {key: reader.get(key, "", to_str) for key in keys}
    reader.check_unknown()
    for key in ("cert", "key"):
        if not values.get(key):
            reader.fail(key, "required when TLS is configured")
    _check_tls_files(reader, values)
    return TLSConfig(**values)


def _check_tls_files(reader: Reader, values: dict[str, str]) -> None:
    """Fail the key of each PEM file that cannot be read or does not hold what it should."""
    usable = {}
    for key in ("cert", "key", "ca", "client_ca"):
        path = values.get(key, "")
        if not path:
            continue
        try:
            with open(path, "rb"):
                usable[key] = path
        except OSError as exc:
            reader.fail(key, f"cannot read {path}: {exc.strerror}")
    for key in ("cert", "ca", "client_ca"):
        if key in usable:
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=usable[key])
            except ssl.SSLError:
                reader.fail(key, f"{usable[key]} holds no PEM certificate")
                usable.pop(key)
    if "cert" in usable and "key" in usable:
        _check_key(reader, usable["cert"], usable["key"])


def _check_key(reader: Reader, cert: str, key: str) -> None:
    """Fail `key` unless it is the unencrypted PEM private key of cert."""
    try:
        # The password callback stops OpenSSL prompting on the terminal for an
        # encrypted key (gRPC could not use one either).
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password=lambda: b"")
    except ssl.SSLError as exc:
        why = "does not match cert" if exc.reason == "KEY_VALUES_MISMATCH" \
            else "is not an unencrypted PEM private key"
        reader.fail("key", f"{key} {why}")
