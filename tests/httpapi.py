"""A tiny client for the manager's JSON HTTP API, for tests against real processes."""
import json
import urllib.error
import urllib.request


class Api:
    """Calls the API with a bearer token; every call returns (status, parsed JSON), or
    (status, text) for a body that is not JSON (the Prometheus exposition)."""

    def __init__(self, port, token):
        self.base = f"http://127.0.0.1:{port}"
        self.token = token

    def call(self, method, path, body=None, token=None, timeout=40):
        """One request; `body` is JSON-encoded unless it is bytes; `token=""` sends none."""
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=body, method=method)
        token = self.token if token is None else token
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, _parsed(response)
        except urllib.error.HTTPError as error:
            return error.code, _parsed(error)

    def get(self, path, **kw):
        return self.call("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.call("POST", path, {} if body is None else body, **kw)

    def agents(self, node):
        """{agent_id: Agent} as the manager stores them; {} for a node not registered yet."""
        status, body = self.get(f"/api/v1/nodes/{node}/agents")
        if status == 404:
            return {}
        assert status == 200, body
        return {a["agent_id"]: a for a in body["agents"]}


def _parsed(response):
    """The body as JSON, or as text when the server says it is not JSON."""
    data = response.read()
    if response.headers.get("Content-Type", "").startswith("application/json"):
        return json.loads(data)
    return data.decode("utf-8", "replace")
