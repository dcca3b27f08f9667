"""The HTTP API: a thin bottle app that translates JSON requests into FleetService calls.

`make_app(agent_service, auth)` builds a fresh bottle.Bottle (never bottle's
default app). One plugin wraps every route: it checks the bearer token
(unless the route is public) and that the token's scope reaches the route's
(a refused operate, sync or delete is audited as `permission_denied`), turns
the handler's dict into a JSON response,
and turns every failure into the error envelope
`{"error": {"code": ..., "message": ...}}` with the status of
fleet.errors.HTTP_STATUS. A bug becomes a logged traceback and a bare
500 "internal error". Error handlers for every 4xx/5xx status replace bottle's
HTML pages (unknown routes, wrong methods), so none ever reaches a client.
The handlers read the request through fleet.manager.api.params.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Callable

import bottle

from fleet import errors
from fleet.manager import tokens
from fleet.manager.api import openapi, params, ui

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
JSON_TYPE = "application/json"
API = "/api/v1"

# The envelope's code for statuses bottle raises itself (unknown route, method...).
STATUS_CODES = {400: "invalid_argument", 401: "unauthenticated", 403: "permission_denied",
                404: "not_found",
                405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
                429: "resource_exhausted", 500: "internal", 502: "daemon_error",
                503: "unavailable", 504: "deadline_exceeded"}


def make_app(agent_service, auth, *, max_body: int = MAX_BODY, events=None,
             metrics=None, metrics_public: bool = False, policies=None,
             rollouts=None) -> bottle.Bottle:
    """A new bottle app serving DESIGN.md's HTTP API.

    `agent_service`: a fleet.manager.service.FleetService (or alike).
    `auth`: a fleet.manager.tokens.ApiAuth; `auth.check(header)` returns the
    token's Caller (name, scope) or raises Unauthenticated.
    `events`: a fleet.manager.events.EventService (None: the events endpoints 404).
    `metrics`: a fleet.manager.api.metrics.ManagerMetrics (None: /metrics 404s);
    `metrics_public`: /metrics answers without a token.
    `policies`: a fleet.manager.changes.policies.PolicyService (None: the policies endpoints 404).
    `rollouts`: a fleet.manager.changes.rollouts.RolloutService (None: the rollouts endpoints 404).
    """
    app = bottle.Bottle()
    app.uninstall(True)            # no JSON/template plugins: the edge plugin renders
    routes = _Routes(agent_service, max_body, openapi.document_json(), events)
    routes.policies = policies
    routes.exposition, routes.exposition_scope = metrics, "public" if metrics_public else "read"
    routes.rollouts = rollouts
    app.install(_Edge(auth, routes.refused))
    dashboard = ui.Dashboard(ui.load_files())
    for method, path, handler, scope in routes.table() + _ui_table(dashboard):
        if scope != "public":
            tokens.rank(scope)         # a typo in the table fails here, not at a request
        app.route(path, method, handler, scope=scope)
    for status in range(400, 600):
        app.error(status)(_error_page)
    return app


class _Routes:
    """The handlers: each reads the request, calls the service, returns a dict."""

    def __init__(self, service, max_body: int, openapi_json: str, events=None):
        self._service = service
        self._events = events
        self._max_body = max_body
        self._openapi = openapi_json
        self.exposition = None               # a ManagerMetrics serving /metrics, or None
        self.exposition_scope = "read"       # "public" with [manager] metrics_public
        self.policies = None                 # a PolicyService, or None (404)
        self.rollouts = None                 # a RolloutService, or None (rollouts 404)

    def table(self) -> list[tuple[str, str, Callable, str]]:
        """(method, path, handler, scope) for every endpoint; scope is the least a
        token needs: "public" (no token), "read", "operate" or "admin"."""
        node, agent = API + "/nodes/<node_id>", API + "/nodes/<node_id>/agents/<agent_id>"
        return [
            ("GET", "/", self.index, "public"),
            ("GET", "/health", self.health, "public"),
            ("GET", API + "/openapi.json", self.openapi, "public"),
            ("GET", API + "/nodes", self.list_nodes, "read"),
            ("GET", node, self.get_node, "read"),
            ("DELETE", node, self.delete_node, "admin"),
            ("GET", node + "/agents", self.list_agents, "read"),
            ("POST", node + "/agents/sync", self.sync, "operate"),
            ("POST", agent + "/operate", self.operate, "operate"),
            ("GET", agent + "/logs", self.logs, "read"),
            ("GET", agent + "/metrics", self.metrics, "read"),
            ("GET", API + "/audit", self.audit, "read"),
            ("GET", agent + "/events", self.agent_events, "read"),
            ("GET", API + "/events", self.events, "read"),
            ("GET", "/metrics", self.prometheus, self.exposition_scope),
            ("GET", API + "/agents", self.fleet_agents, "read"),
            ("GET", API + "/overview", self.overview, "read"),
            ("GET", node + "/metrics", self.node_metrics, "read"),
            ("GET", API + "/policies", self.list_policies, "read"),
            ("GET", API + "/policies/<name>", self.get_policy, "read"),
            ("PUT", API + "/policies/<name>", self.put_policy, "admin"),
            ("DELETE", API + "/policies/<name>", self.delete_policy, "admin"),
            ("POST", node + "/reload", self.reload, "operate"),
            ("POST", API + "/rollouts", self.create_rollout, "operate"),
            ("GET", API + "/rollouts", self.list_rollouts, "read"),
            ("GET", API + "/rollouts/<rollout_id>", self.get_rollout, "read"),
            ("POST", API + "/rollouts/<rollout_id>/cancel", self.cancel_rollout, "operate"),
        ]

    def index(self):
        ui.redirect_browser()
        return {"name": "fleet", "api": API, "openapi": API + "/openapi.json"}

    def health(self):
        return {"status": "ok"}

    def openapi(self):
        return _Raw(self._openapi)

    def list_nodes(self):
        nodes, cursor = self._service.list_nodes(params.given("status"), params.labels(),
                                                 *params.page())
        return {"nodes": nodes, "next_cursor": cursor}

    def get_node(self, node_id):
        return {"node": self._service.get_node(node_id)}

    def delete_node(self, node_id):
        self._service.delete_node(node_id, actor=params.actor())
        return {"node_id": node_id, "deleted": True}

    def list_agents(self, node_id):
        agents, cursor = self._service.list_agents(node_id, params.given("health"), *params.page(),
                                                   status=params.given("status"),
                                                   type=params.given("type"))
        return {"agents": agents, "next_cursor": cursor}

    def sync(self, node_id):
        return {"agents": self._service.sync(node_id, actor=params.actor())}

    def reload(self, node_id):
        return self._service.reload(node_id, actor=params.actor())

    def operate(self, node_id, agent_id):
        body = params.json_body(self._max_body)
        operation = body.get("operation") if isinstance(body, dict) else None
        if not isinstance(operation, str):
            raise errors.InvalidArgument('body must be {"operation": "start|stop|restart"}')
        return {"agent": self._service.operate(node_id, agent_id, operation, actor=params.actor())}

    def logs(self, node_id, agent_id):
        lines = params.int_query("lines", 100)
        grep = params.query("grep") or ""
        offset = params.int_query("offset", -1) if params.query("offset") is not None else None
        return self._service.logs(node_id, agent_id, lines, grep, offset)

    def metrics(self, node_id, agent_id):
        duration = params.int_query("duration", 3600)
        return {"points": self._service.metrics(node_id, agent_id, duration)}

    def node_metrics(self, node_id):
        duration = params.int_query("duration", 3600)
        return {"points": self._service.node_metrics(node_id, duration)}

    def audit(self):
        entries, cursor = self._service.audit(params.given("node"), *params.page())
        return {"entries": entries, "next_cursor": cursor}

    def agent_events(self, node_id, agent_id):
        events, cursor = self._event_service().agent_events(
            node_id, agent_id, params.since(), *params.page())
        return {"events": events, "next_cursor": cursor}

    def events(self):
        events, cursor = self._event_service().events(
            params.given("node"), params.given("agent"), params.given("kind"),
            params.since(), *params.page())
        return {"events": events, "next_cursor": cursor}

    def refused(self, callback: Callable, kwargs: dict, actor: str, message: str) -> None:
        """Audit an operate, sync or delete refused for the token's scope, like one
        that failed; other routes, and an operate whose body names no operation,
        are not operations and leave no row."""
        if callback == self.operate:
            body = params.json_body(self._max_body)
            operation = body.get("operation") if isinstance(body, dict) else None
        else:
            operation = {self.sync: "sync", self.delete_node: "delete",
                         self.reload: "reload"}.get(callback)
        if callback in (self.put_policy, self.delete_policy) and self.policies is not None:
            operation = "policy_put" if callback == self.put_policy else "policy_delete"
            self.policies.record_refused(actor, kwargs.get("name"), operation, message)
        elif isinstance(operation, str):
            self._service.record_refused(actor, kwargs.get("node_id"), kwargs.get("agent_id"),
                                         operation, message)

    def prometheus(self):
        if self.exposition is None:
            raise errors.NotFound("metrics are not served here")
        return _Body(*self.exposition.exposition())
    def fleet_agents(self):
        agents, cursor = self._service.fleet_agents(
            params.given("status"), params.given("health"), params.given("type"),
            params.given("node"), params.labels(), *params.page())
        return {"agents": agents, "next_cursor": cursor}

    def overview(self):
        return self._service.overview()

    def list_policies(self):
        policies, cursor = self._policy_service().list(*params.page())
        return {"policies": policies, "next_cursor": cursor}

    def get_policy(self, name):
        return {"policy": self._policy_service().get(name)}

    def put_policy(self, name):
        service = self._policy_service()
        return {"policy": service.put(name, params.json_body(self._max_body), actor=params.actor())}

    def delete_policy(self, name):
        return self._policy_service().delete(name, actor=params.actor())

    def _policy_service(self):
        if self.policies is None:
            raise errors.NotFound("policies are not served here")
        return self.policies
    def create_rollout(self):
        body = params.json_body(self._max_body)
        return _Accepted({"rollout": self._rollout_service().create(body, actor=params.actor())})

    def list_rollouts(self):
        rollouts, cursor = self._rollout_service().list(*params.page())
        return {"rollouts": rollouts, "next_cursor": cursor}

    def get_rollout(self, rollout_id):
        return {"rollout": self._rollout_service().get(rollout_id)}

    def cancel_rollout(self, rollout_id):
        return {"rollout": self._rollout_service().cancel(rollout_id, actor=params.actor())}

    def _rollout_service(self):
        if self.rollouts is None:
            raise errors.NotFound("rollouts are not served here")
        return self.rollouts

    def _event_service(self):
        if self._events is None:
            raise errors.NotFound("events are not served here")
        return self._events


def _ui_table(dashboard: ui.Dashboard) -> list[tuple[str, str, Callable, str]]:
    """The dashboard's routes: static files, no token (the page asks for one)."""
    return [
        ("GET", "/ui", dashboard.bare, "public"),
        ("GET", "/ui/", dashboard.index, "public"),
        ("GET", "/ui/<name>", dashboard.file, "public"),
    ]


class _Raw(str):
    """A body already encoded as JSON."""


class _Accepted(dict):
    """A body answered 202 Accepted (work goes on after the answer: a rollout)."""


class _Body:
    """A body that is not JSON, with its Content-Type (the Prometheus exposition)."""

    def __init__(self, data: bytes, content_type: str):
        self.data = data
        self.content_type = content_type


class _Edge:
    """The plugin around every route: auth, JSON rendering, errors translated once."""

    name = "fleet-edge"
    api = 2

    def __init__(self, auth, on_refused: Callable[[Callable, dict, str, str], None]):
        self._auth = auth
        self._on_refused = on_refused    # audits a refused operation (_Routes.refused)

    def apply(self, callback: Callable, route: bottle.Route) -> Callable:
        scope = route.config.get("scope", "admin")

        def wrapper(*args, **kwargs):
            try:
                if scope != "public":
                    self._authorize(scope, route.callback, kwargs)
                payload = callback(*args, **kwargs)
                return _respond(202 if isinstance(payload, _Accepted) else 200, payload)
            except errors.FleetError as exc:
                return _fleet_error(exc)
            except bottle.HTTPResponse:
                raise                      # bottle's own control flow; errors get _error_page
            except Exception:  # noqa: BLE001 - the edge: log the bug, show nothing of it
                log.exception("internal error: %s %s", bottle.request.method,
                              bottle.request.path[:200])
                return _envelope(500, "internal", "internal error")

        return wrapper

    def _authorize(self, scope: str, callback: Callable, kwargs: dict) -> None:
        """Unauthenticated without a valid token, PermissionDenied (logged, and audited
        for an operation) when its scope is below `scope`."""
        caller = self._auth.check(bottle.request.get_header("Authorization"))
        bottle.request.environ["fleet.token_name"] = caller.name
        try:
            caller.require(scope)
        except errors.PermissionDenied as exc:
            log.warning("permission denied: token=%s scope=%s needs=%s: %s %s", caller.name,
                        caller.scope, scope, bottle.request.method, bottle.request.path[:200])
            try:
                self._on_refused(callback, kwargs, caller.name, exc.message)
            except errors.FleetError:
                pass                       # a malformed body: no operation to audit
            raise


# ---- responses ----

def _respond(status: int, payload: Any) -> str:
    response = bottle.response
    response.status = status
    response.content_type = JSON_TYPE
    response.set_header("Cache-Control", "no-store")
    response.set_header("X-Content-Type-Options", "nosniff")
    if isinstance(payload, _Raw):
        return str(payload)
    if isinstance(payload, _Body):
        response.content_type = payload.content_type
        return payload.data
    return json.dumps(payload, separators=(",", ":")) + "\n"


def _envelope(status: int, code: str, message: str) -> str:
    return _respond(status, {"error": {"code": code, "message": message}})


def _fleet_error(exc: errors.FleetError) -> str:
    status = errors.lookup(errors.HTTP_STATUS, exc)
    if status == 401:
        bottle.response.set_header("WWW-Authenticate", 'Bearer realm="fleet"')
    code = exc.code if status != 500 else "internal"
    message = exc.message if status != 500 else "internal error"
    if status >= 500:
        log.warning("%s %s -> %d %s", bottle.request.method, bottle.request.path[:200],
                    status, exc.message)
    return _envelope(status, code, message)


def _error_page(error: bottle.HTTPError) -> str:
    """Every error bottle raises itself, as the JSON envelope (never its HTML page)."""
    status = error.status_code
    if status >= 500:
        # Only reached when something failed outside the edge plugin.
        log.error("internal error outside a route: %s", error.traceback or error.body)
        return _envelope(500, "internal", "internal error")
    request = bottle.request
    if status == 404:
        message = f"no such endpoint: {request.method} {request.path[:200]}"
    elif status == 405:
        message = f"method {request.method} not allowed on {request.path[:200]}"
    else:
        message = bottle.HTTP_CODES.get(status, "error").lower()
    code = STATUS_CODES.get(status, "invalid_argument")
    return _envelope(status, code, message)
