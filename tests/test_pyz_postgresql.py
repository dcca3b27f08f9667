"""fleet.pyz and PostgreSQL: the driver is bundled only by `build_zipapp.py --with-postgres`
(a manager on PostgreSQL from that pyz runs in test_e2e.py)."""
import subprocess
import sys
import zipfile

CONFIG = """
[manager]
api_token = "api-token-for-pyz-tests-0123456789"
cluster_token = "cluster-token-for-pyz-tests-9876543210"
"""


def wheels(path):
    """Names of the wheels a pyz carries."""
    with zipfile.ZipFile(path) as zf:
        return [name.rsplit("/", 1)[-1] for name in zf.namelist() if name.endswith(".whl")]


def test_only_a_pyz_built_with_postgres_carries_the_driver(pyz, pg_pyz):
    """--with-postgres adds the pinned psycopg2-binary wheel and nothing else."""
    extra = set(wheels(pg_pyz)) - set(wheels(pyz))
    assert [name.split("-")[:2] for name in extra] == [["psycopg2_binary", "2.9.13"]]
    assert not any(name.startswith("psycopg2") for name in wheels(pyz))


def test_postgresql_without_the_driver_is_one_config_error(pyz, tmp_path):
    """A pyz without the driver, on a Python without it (-S: no site-packages), refuses a
    postgresql:// database in one `config error:` line, exit 2, naming the way out."""
    (tmp_path / "manager.toml").write_text(CONFIG)
    done = subprocess.run(
        [sys.executable, "-S", str(pyz), "--role", "manager", "--config",
         str(tmp_path / "manager.toml"), "--db", "postgresql://fleet:secret@127.0.0.1:1/fleet",
         "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"],
        env={"FLEET_CACHE_DIR": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == [
        "config error: [manager] db: PostgreSQL needs the psycopg2 driver, which is not "
        "installed (pip install psycopg2-binary; a fleet.pyz carries it when built with "
        "--with-postgres)"]
