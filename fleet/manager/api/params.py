"""What a request of the HTTP API carries, read and checked: the name of its token,
its query parameters and its JSON body. Each bad value raises
fleet.errors.InvalidArgument (PayloadTooLarge for a body over the bound) naming
the parameter, which the routes' edge turns into a 400 (413) envelope."""
from __future__ import annotations

import json
import re
from typing import Any, Optional

import bottle

from fleet import errors
from fleet.manager import paging

_INTEGER = re.compile(r"[+-]?[0-9]{1,18}")


def actor() -> str:
    """The name of the API token of this request (for the audit log)."""
    return bottle.request.environ.get("fleet.token_name", "")


def _decode(name: str, raw: str) -> str:
    # bottle hands out query values latin-1 decoded; recover the UTF-8 text.
    try:
        return raw.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise errors.InvalidArgument(f"query parameter {name} is not UTF-8") from None


def query(name: str) -> Optional[str]:
    raw = bottle.request.query.get(name)
    return None if raw is None else _decode(name, raw)


def given(name: str) -> Optional[str]:
    """A query parameter, None when absent or empty (an unset filter)."""
    return query(name) or None


def int_query(name: str, default: int) -> int:
    text = query(name)
    if text is None:
        return default
    if not _INTEGER.fullmatch(text.strip()):
        raise errors.InvalidArgument(f"{name} must be an integer, not {text[:32]!r}")
    return int(text)


def labels() -> Optional[list[str]]:
    """The repeatable `label` query parameter (KEY=VALUE each), None when absent."""
    return [_decode("label", value) for value in bottle.request.query.getall("label")] or None


def page() -> tuple[int, Optional[str]]:
    """(limit, cursor) of a list request (fleet.manager.paging checks them)."""
    return int_query("limit", paging.DEFAULT_LIMIT), given("cursor")


def since() -> Optional[int]:
    """The `since` query parameter (Unix ms), None when absent or empty."""
    return int_query("since", -1) if query("since") else None


def json_body(max_body: int) -> Any:
    """The request body parsed as JSON whatever its Content-Type (plain `curl -d` works)."""
    request = bottle.request
    length = _content_length(request.environ)
    if length > max_body:
        raise errors.PayloadTooLarge(f"request body over {max_body} bytes")
    stream = request.environ.get("wsgi.input")
    if stream is None or (length < 0 and not request.chunked):
        data = b""
    else:
        # Reads at most one byte past the limit, whatever the sender claims.
        data = stream.read(max_body + 1 if length < 0 else length)
    if len(data) > max_body:
        raise errors.PayloadTooLarge(f"request body over {max_body} bytes")
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        raise errors.InvalidArgument("request body is not valid JSON") from None
    if b"\\u" in data:
        _check_text(body)
    return body


def _check_text(body: Any) -> None:
    """InvalidArgument when a string escapes half a UTF-16 pair (`"\\ud800"`): JSON
    allows it, but it is no text: the database, a log line or a command would fail
    on it long after the request was accepted."""
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise errors.InvalidArgument(
            "request body has a lone surrogate escape (\\ud800-\\udfff): not text") from None
    except RecursionError:
        raise errors.InvalidArgument("request body is nested too deeply") from None


def _content_length(environ: dict) -> int:
    """The declared body length; -1 when none (chunked or empty)."""
    text = environ.get("CONTENT_LENGTH") or ""
    if not text:
        return -1
    if not text.strip().isdigit():
        raise errors.InvalidArgument("bad Content-Length")
    return int(text)
