"""The HTTP side of ctl: one request at a time to the manager's JSON API.

Every failure becomes a CtlError whose message is what the user reads: the
server's `error.message` for an API error, one line naming the URL when the
manager cannot be reached.
"""
from __future__ import annotations

import http.client
import json
import logging
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Iterator, Optional

log = logging.getLogger(__name__)

PAGE_SIZE = 1000   # items asked for per page of a list (the API allows up to 5000)


class CtlError(Exception):
    """A failure shown to the user as one line; `status` is the HTTP status (0: none)."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.message = message
        self.status = status


def path(*parts: str) -> str:
    """An API path from segments; ids are quoted so an odd one cannot reach another route."""
    return "/" + "/".join(urllib.parse.quote(str(p), safe="") for p in parts)


class Client:
    """Calls `base_url` + path with the bearer token; answers parsed JSON."""

    def __init__(self, base_url: str, token: str = "", ca_file: str = "",
                 timeout: float = 60.0, token_hint: str = ""):
        self.base_url = base_url.rstrip("/")
        self._token = token            # sent as Authorization: Bearer; "" sends none
        self._timeout = timeout        # seconds for connect and for each read
        self._hint = token_hint        # added to a 401's message: where the token came from
        self._context = None
        if self.base_url.startswith("https:"):
            self._context = ssl.create_default_context(cafile=ca_file or None)

    def get(self, api_path: str, query: Optional[dict] = None) -> Any:
        """GET; `query` values None are left out, lists repeat the key."""
        return self.call("GET", api_path, query)

    def post(self, api_path: str, body: Any = None) -> Any:
        """POST a JSON body ({} when None)."""
        return self.call("POST", api_path, None, {} if body is None else body)

    def call(self, method: str, api_path: str, query: Optional[dict] = None,
             body: Any = None) -> Any:
        """One request; the parsed JSON answer, or CtlError."""
        url = self.base_url + api_path + _query_string(query)
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self._token:
            request.add_header("Authorization", f"Bearer {self._token}")
        log.debug("%s %s", method, url)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout,
                                        context=self._context) as response:
                return _parse(response.read(), response.status, url)
        except urllib.error.HTTPError as error:
            raise self._api_error(error, url) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            raise CtlError(_unreachable(self.base_url, error)) from None

    def pages(self, api_path: str, key: str, query: Optional[dict] = None,
              limit: Optional[int] = None) -> Iterator[dict]:
        """Each page's JSON of a list endpoint, following next_cursor until null
        (or until `limit` items were read); an endpoint without next_cursor is one page."""
        query = dict(query or {})
        read = 0
        while True:
            size = PAGE_SIZE if limit is None else min(PAGE_SIZE, limit - read)
            page = self.get(api_path, {**query, "limit": size})
            yield page
            read += len(page.get(key) or [])
            cursor = page.get("next_cursor")
            if not cursor or (limit is not None and read >= limit):
                return
            query["cursor"] = cursor

    def _api_error(self, error: urllib.error.HTTPError, url: str) -> CtlError:
        try:
            body = json.loads(error.read() or b"null")
            message = body["error"]["message"]
        except (ValueError, TypeError, KeyError, OSError):
            return CtlError(f"HTTP {error.code} from {url}: not an answer of the fleet API",
                            error.code)
        if error.code == 401 and self._hint:
            message = f"{message} ({self._hint})"
        return CtlError(message, error.code)


def _query_string(query: Optional[dict]) -> str:
    if not query:
        return ""
    pairs = []
    for name, value in query.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        pairs.extend((name, str(v)) for v in values if v is not None)
    return "?" + urllib.parse.urlencode(pairs) if pairs else ""


def _parse(raw: bytes, status: int, url: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        raise CtlError(f"HTTP {status} from {url}: not JSON") from None


def _unreachable(base_url: str, error: Exception) -> str:
    """One line: which URL, and why in words."""
    reason = getattr(error, "reason", error)
    if isinstance(reason, ConnectionRefusedError):
        why = "connection refused"
    elif isinstance(reason, (socket.timeout, TimeoutError)):
        why = "timed out"
    elif isinstance(reason, socket.gaierror):
        why = f"unknown host ({reason.strerror})"
    elif isinstance(reason, ssl.SSLCertVerificationError):
        why = f"TLS certificate not trusted ({reason.verify_message}); try --ca-file"
    elif isinstance(reason, ssl.SSLError):
        why = f"TLS failed ({reason.reason or reason})"
    else:
        why = getattr(reason, "strerror", None) or str(reason)
    return f"cannot reach the manager at {base_url}: {why}"
