"""Values fleet checks everywhere: agent and node ids, HOST:PORT addresses, and the
converters that turn a config value into a checked one.

Each converter raises ValueError with a message naming the rule it broke; the
config reader adds the section and key. This module imports nothing of fleet.
"""
from __future__ import annotations

import ipaddress
import re
import shlex
import signal
import urllib.parse
from typing import Any, Callable

AGENT_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
NODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
MAX_SECONDS = 365 * 86400.0


def valid_node_id(value: str) -> bool:
    """node_id rule of DESIGN.md: a safe file name, no `..`."""
    # fullmatch: `$` would also match before a trailing newline.
    return bool(NODE_ID_RE.fullmatch(value)) and ".." not in value


def valid_agent_id(value: str) -> bool:
    return bool(AGENT_ID_RE.fullmatch(value))


def to_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"not a string: {value!r}")
    if "\x00" in value:
        raise ValueError("contains a NUL byte")
    return value


def to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return value.lower() in ("1", "true", "yes", "on")
    raise ValueError(f"not a boolean: {value!r}")


def to_seconds(value: Any, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"not a number of seconds: {value!r}")
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"not a number of seconds: {value!r}") from None
    if not minimum <= seconds <= MAX_SECONDS:
        raise ValueError(f"must be between {minimum:g} and {MAX_SECONDS:g} seconds")
    return seconds


def to_int(value: Any, minimum: int, maximum: int) -> int:
    if isinstance(value, bool):
        raise ValueError(f"not an integer: {value!r}")
    try:
        number = int(value)
    except (ValueError, TypeError):
        raise ValueError(f"not an integer: {value!r}") from None
    if isinstance(value, float) and value != number:
        raise ValueError(f"not an integer: {value!r}")
    if not minimum <= number <= maximum:
        raise ValueError(f"must be between {minimum} and {maximum}")
    return number


def to_address(value: Any) -> str:
    """HOST:PORT or [v6]:PORT, port 0..65535 (0 = pick a free one)."""
    text = to_str(value)
    host, port = split_address(text)
    if not host:
        raise ValueError(f"not HOST:PORT: {text!r}")
    return text


def split_address(text: str) -> tuple[str, int]:
    """('host', port) of HOST:PORT / [v6]:PORT; ValueError if malformed."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^\s:\[\]]+):(\d{1,5})", text)
    if not match:
        raise ValueError(f"not HOST:PORT: {text!r}")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if port > 65535:
        raise ValueError(f"port out of range: {text!r}")
    if match.group(1):
        ipaddress.IPv6Address(host)
    return host, port


def join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(address: str) -> bool:
    host, _ = split_address(address)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def to_address_list(value: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise ValueError("not an address or a non-empty list of addresses")
    return tuple(to_address(item.strip() if isinstance(item, str) else item) for item in items)


def to_str_map(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise ValueError("not a table of strings")
    for key, item in value.items():
        if not isinstance(item, str) or "\x00" in key or "\x00" in item:
            raise ValueError(f"{key}: not a string")
    return tuple(sorted(value.items()))


def to_signal(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.isdigit():
        number = int(value)
    elif isinstance(value, str):
        name = value.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        if not hasattr(signal.Signals, name):
            raise ValueError(f"unknown signal: {value!r}")
        number = int(signal.Signals[name])
    else:
        raise ValueError(f"not a signal: {value!r}")
    if number not in {int(s) for s in signal.Signals}:
        raise ValueError(f"unknown signal: {value!r}")
    return number


COMMAND_FORMS = "a list of strings or one shell-like string"


def to_command(value: Any) -> tuple[str, ...]:
    """A list of strings, or one string split like a shell would.

    Empty in either form ("", "  ", []) gets the same message, naming both forms.
    """
    if isinstance(value, str):
        try:
            parts = shlex.split(to_str(value))
        except ValueError as exc:  # shlex: "No closing quotation"
            raise ValueError(f"not a shell-like string ({exc})") from None
    elif isinstance(value, list) and all(isinstance(p, str) for p in value):
        parts = value
    else:
        raise ValueError(f"must be {COMMAND_FORMS}: {value!r}")
    if not parts:
        raise ValueError(f"must not be empty: {COMMAND_FORMS}")
    if not parts[0]:
        raise ValueError("the program (the first item) is empty")
    if any("\x00" in p for p in parts):
        raise ValueError("contains a NUL byte")
    return tuple(parts)


def to_db_url(value: Any) -> str:
    """sqlite:///PATH (a file: the manager's threads each open their own connection,
    so `:memory:` would give each its own empty database) or postgresql://.../NAME."""
    url = to_str(value)
    if not re.match(r"^(sqlite:///.+|postgres(ql)?://.+)$", url):
        raise ValueError(f"not sqlite:///PATH or postgresql://...: {url!r}")
    if url == "sqlite:///:memory:":
        raise ValueError("sqlite:///:memory: is not supported (each manager thread would get "
                         "its own empty database): use a file, e.g. sqlite:///fleet.db")
    if url.startswith("postgres") and not urllib.parse.urlsplit(url).path.strip("/"):
        raise ValueError(f"the PostgreSQL URL names no database: {url!r}")
    return url


def to_nonempty_str(value: Any) -> str:
    text = to_str(value)
    if not text:
        raise ValueError("must not be empty")
    return text


def to_node_id(value: Any) -> str:
    text = to_str(value)
    if text and not valid_node_id(text):
        raise ValueError(f"{text!r} does not match {NODE_ID_RE.pattern} (and no '..')")
    return text


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def to_bytes(value: Any) -> int:
    """A size: an integer of bytes, or a string like "512MiB", "2G", "100K" (units of 1024)."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _SIZE_RE.match(value):
        amount, unit = _SIZE_RE.match(value).groups()
        number = int(float(amount) * _SIZE_UNITS[(unit or "")[:1].upper()])
    else:
        raise ValueError(f"not a size (bytes, or a number with K, M, G or T[iB]): {value!r}")
    if not 1 <= number <= 2**50:
        raise ValueError(f"must be between 1 byte and 1 PiB: {value!r}")
    return number


def to_http_url(value: Any) -> str:
    """An http:// URL with a host (the probe speaks plain HTTP)."""
    text = to_str(value)
    parts = urllib.parse.urlsplit(text)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"not an http://HOST[:PORT]/PATH URL: {text!r}")
    try:
        parts.port
    except ValueError:
        raise ValueError(f"port out of range: {text!r}") from None
    return text


def to_choice(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}: {value!r}")
        return value
    return convert


# ---- layering ----

# flag name -> (section, key); None section = top level. cluster_token feeds both roles.
