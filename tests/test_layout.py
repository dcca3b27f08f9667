"""The architecture's rules about who imports whom (DESIGN.md, STYLE.md)."""
import ast
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
LEAVES = ("states", "errors", "values", "rwlock")


def fleet_imports(path):
    """Every `fleet...` module a source file imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fleet"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("fleet"))
    return found


@pytest.mark.parametrize("side,other", [("daemon", "manager"), ("manager", "daemon")])
def test_daemon_and_manager_never_import_each_other(side, other):
    """No module of fleet/daemon imports fleet.manager, and the other way round."""
    for path in (REPO / "fleet" / side).rglob("*.py"):
        bad = [m for m in fleet_imports(path) if m.startswith(f"fleet.{other}")]
        assert not bad, (path.name, bad)


def test_leaf_modules_import_nothing_of_fleet():
    """states, errors, values and rwlock import nothing from fleet."""
    for leaf in LEAVES:
        assert not fleet_imports(REPO / "fleet" / f"{leaf}.py"), leaf


def test_the_daemon_role_loads_neither_peewee_nor_bottle():
    """Importing the daemon's whole stack leaves peewee, bottle, the HTTP server (uvicorn,
    h11) and prometheus_client (loaded only with metrics_listen) unloaded."""
    code = ("import sys; import fleet.cli, fleet.roles, fleet.daemon.app; "
            "print(sorted(m for m in ('peewee', 'bottle', 'uvicorn', 'h11', 'prometheus_client')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True, env={"GRPC_ENABLE_FORK_SUPPORT": "0", "PATH": ""})
    assert out.stdout.strip() == "[]"
