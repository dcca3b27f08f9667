"""The dashboard's static files (fleet/manager/ui/), served at /ui/ without a token.

The files are read once, when the app is built, into a fixed table of names:
a request can only ever get one of them (a path with `..`, a directory or any
other name is a 404), and nothing touches the disk per request. Every answer
carries a strict Content-Security-Policy (scripts, styles and API calls from
this origin only, no inline code, no framing), an ETag, and
`Cache-Control: no-cache`, so a browser revalidates each load (304 when
unchanged) and sees a new dashboard right after a manager upgrade.

A browser that asks for `/` (Accept names text/html) is sent to the dashboard;
API clients keep getting the JSON index. The page itself asks for the API token
and keeps it in the tab's sessionStorage: no cookie, so no CSRF.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import logging

import bottle

from fleet import errors

log = logging.getLogger(__name__)

PACKAGE, FOLDER = "fleet.manager", "ui"
INDEX = "index.html"
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml",
                 ".png": "image/png"}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}


@dataclasses.dataclass(frozen=True)
class StaticFile:
    """One file of the dashboard, as served."""

    body: bytes
    content_type: str
    etag: str          # quoted, as the header carries it


def load_files() -> dict[str, StaticFile]:
    """{name: StaticFile} for every servable file in fleet/manager/ui/ (also inside fleet.pyz)."""
    folder = importlib.resources.files(PACKAGE).joinpath(FOLDER)
    found = {}
    for entry in folder.iterdir() if folder.is_dir() else ():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in CONTENT_TYPES and not entry.name.startswith("."):
            body = entry.read_bytes()
            etag = '"%s"' % hashlib.sha256(body).hexdigest()[:20]
            found[entry.name] = StaticFile(body, CONTENT_TYPES[suffix], etag)
    if INDEX not in found:
        log.warning("dashboard files not found in %s; /ui/ answers 404", folder)
    return found


class Dashboard:
    """The handlers of /ui, /ui/ and /ui/<name>; each ends by raising its response
    (bottle's way to answer something other than the API's JSON)."""

    def __init__(self, files: dict[str, StaticFile]):
        self._files = files        # name -> StaticFile, fixed once built

    def index(self):
        """GET /ui/: the page."""
        self.file(INDEX)

    def file(self, name: str):
        """GET /ui/<name>: one of the files, 304 when the browser's copy is current."""
        found = self._files.get(name)
        if found is None:
            raise errors.NotFound(f"no such dashboard file: {name[:100]!r}")
        headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache", "ETag": found.etag}
        if found.etag in _etags(bottle.request.get_header("If-None-Match") or ""):
            raise bottle.HTTPResponse(status=304, headers=headers)
        raise bottle.HTTPResponse(found.body, 200, {**headers, "Content-Type": found.content_type})

    def bare(self):
        """GET /ui: to /ui/, where the page's relative links work."""
        raise _redirect("ui/")


def redirect_browser() -> None:
    """At GET /: send a browser (Accept names text/html) to the dashboard; else return."""
    if "text/html" in (bottle.request.get_header("Accept") or ""):
        raise _redirect("ui/")


def _redirect(location: str) -> bottle.HTTPResponse:
    # Relative, so it also holds behind a proxy that mounts the manager under a prefix.
    return bottle.HTTPResponse(status=302, headers={
        "Location": location, "Vary": "Accept", "Cache-Control": "no-store"})


def _etags(header: str) -> set[str]:
    """The entity tags of an If-None-Match header (weak ones compared as strong)."""
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}
