"""Shared pytest setup."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pg import db_url, pg_server  # noqa: F401 - fixtures every test file may use

# gRPC's fork support must be off before grpc is imported (DESIGN.md).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

REPO = Path(__file__).resolve().parent.parent


def build(output, *args):
    """Build a pyz from the repo's real fleet.py and fleet/ into ``output``."""
    cmd = [sys.executable, str(REPO / "build_zipapp.py"), "-o", str(output), *args]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    return output


@pytest.fixture(scope="session")
def pyz(tmp_path_factory):
    """fleet.pyz for the running interpreter, built once per session."""
    return build(tmp_path_factory.mktemp("pyz") / "fleet.pyz")


@pytest.fixture(scope="session")
def pg_pyz(tmp_path_factory):
    """fleet.pyz built with --with-postgres (the PostgreSQL driver bundled), once per session."""
    return build(tmp_path_factory.mktemp("pg_pyz") / "fleet.pyz", "--with-postgres")


@pytest.fixture
def cluster(tmp_path):
    """Real fleet processes under tmp_path, all stopped (and their agents gone) at the end."""
    from tests.realfleet import Cluster
    fleet = Cluster(tmp_path)
    yield fleet
    fleet.close()
