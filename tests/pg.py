"""A real PostgreSQL server for the test session, and the `db_url` engine fixture.

`db_url` is parametrized "sqlite" / "postgresql": a test (or a fixture) that asks
for it runs once per engine, on a fresh database each time (an SQLite file in
tmp_path, or a new database on the session's PostgreSQL server, dropped after
the test). `@sqlite_only` / `@postgresql_only` narrow one test to one engine; a
module whose own `db_url` defaults to one engine (see test_http.py) widens a
test with `@both_engines`.

The server: `initdb` into a temporary directory, `postgres` listening only on
127.0.0.1 on a free port (unix sockets in that directory), fsync off; run as the
`postgres` system user (or `nobody`) when the tests run as root, since
PostgreSQL refuses root. Stopped and removed at the end of the session. With
FLEET_TEST_PG_URL=postgresql://user:pass@host:port/postgres the tests use that
server instead (the user must be allowed to CREATE DATABASE). Without either,
the PostgreSQL variants fail saying what to install.
"""
import glob
import itertools
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import urllib.parse

import pytest

from tests.helpers import wait_for

ENGINES = ("sqlite", "postgresql")
ENV_URL = "FLEET_TEST_PG_URL"
SERVER_USER = "fleet"          # the superuser initdb creates
START_TIMEOUT = 60.0
SCRATCH_NEEDS = 1 << 30        # bytes free in /dev/shm to put the server there
SERVER_SETTINGS = {            # a throwaway server: speed over durability
    "listen_addresses": "127.0.0.1", "fsync": "off", "synchronous_commit": "off",
    "full_page_writes": "off", "max_connections": "200", "shared_buffers": "32MB",
    "wal_level": "minimal", "max_wal_senders": "0", "max_wal_size": "256MB",
    "log_min_messages": "warning", "log_min_error_statement": "panic",
}
# What a durable server (LocalServer(durable=True), for benchmarks) leaves at
# PostgreSQL's own defaults: every commit flushed, full pages after a checkpoint.
SPEED_OVER_DURABILITY = ("fsync", "synchronous_commit", "full_page_writes", "max_wal_size")

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
postgresql_only = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
both_engines = pytest.mark.parametrize("db_url", ENGINES, indirect=True)


def is_postgresql(url):
    """True for a PostgreSQL URL (the engine a `db_url` names)."""
    return url.startswith(("postgresql://", "postgres://"))


def find_bindir():
    """The directory of initdb and postgres: on PATH, else Debian's newest; None if absent."""
    on_path = shutil.which("initdb")
    candidates = [os.path.dirname(on_path)] if on_path else []
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(versions, key=lambda d: int(re.sub(r"\D", "", d) or 0), reverse=True)
    for bindir in candidates:
        if all(os.access(os.path.join(bindir, b), os.X_OK) for b in ("initdb", "postgres")):
            return bindir
    return None


def scratch_dir():
    """Where the server's files go: memory (/dev/shm) when it has room, else TMPDIR."""
    shm = "/dev/shm"
    if not (os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK)):
        return None
    stat = os.statvfs(shm)
    return shm if stat.f_bavail * stat.f_frsize >= SCRATCH_NEEDS else None


def free_port():
    """A port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class WriteLock:
    """Another connection that takes and releases the write lock of the manager's tables
    (SQLite: the database's; PostgreSQL: EXCLUSIVE locks, which still let readers read)."""

    def __init__(self, url):
        if is_postgresql(url):
            import psycopg2
            self.conn = psycopg2.connect(url)     # a transaction opens at the first statement
            self.statement = "LOCK TABLE node, agent, event IN EXCLUSIVE MODE"
        else:
            self.conn = sqlite3.connect(url[len("sqlite:///"):], timeout=0,
                                        isolation_level=None)
            self.statement = "BEGIN EXCLUSIVE"
        self.held = False

    def take(self):
        self.conn.cursor().execute(self.statement)
        self.held = True

    def release(self):
        if self.held:
            self.conn.rollback()
            self.held = False

    def close(self):
        self.release()
        self.conn.close()


class Server:
    """A PostgreSQL server on which the tests create and drop their databases."""

    def __init__(self, url):
        parts = urllib.parse.urlsplit(url)
        self.admin_params = {"host": parts.hostname or "127.0.0.1", "port": parts.port or 5432,
                             "user": urllib.parse.unquote(parts.username or ""),
                             "password": urllib.parse.unquote(parts.password or ""),
                             "dbname": parts.path.lstrip("/") or "postgres"}
        self._names = itertools.count(1)

    def url(self, name):
        """postgresql://user:pass@host:port/NAME on this server."""
        p = self.admin_params
        auth = urllib.parse.quote(p["user"], safe="")
        if p["password"]:
            auth += ":" + urllib.parse.quote(p["password"], safe="")
        return f"postgresql://{auth}@{p['host']}:{p['port']}/{name}"

    def execute(self, sql):
        """Run one statement on the admin database, outside any transaction."""
        import psycopg2
        conn = psycopg2.connect(connect_timeout=10,
                                **{k: v for k, v in self.admin_params.items() if v})
        try:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(sql)
        finally:
            conn.close()

    def create_database(self):
        """A new empty database; its name."""
        name = f"fleet_test_{os.getpid()}_{next(self._names)}"
        self.execute(f"CREATE DATABASE {name} STRATEGY FILE_COPY")
        return name

    def drop_database(self, name):
        """Drop a database, closing whatever connections a test left open on it."""
        self.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


class LocalServer(Server):
    """A server of our own in a temporary directory, run as an unprivileged user.

    `durable`: as an operator would run it, for benchmarks: its files on disk (not
    /dev/shm) and PostgreSQL's defaults for SPEED_OVER_DURABILITY.
    """

    def __init__(self, bindir, durable=False):
        self.bindir = bindir
        self.durable = durable
        self.dir = tempfile.mkdtemp(prefix="fleet-pg-", dir=None if durable else scratch_dir())
        self.password = secrets.token_hex(16)
        self.proc = None
        self._user = self._unprivileged_user()
        try:
            if self._user:
                os.chown(self.dir, self._user.pw_uid, self._user.pw_gid)
            self._initdb()
            self._start()
        except BaseException:
            self.stop()
            raise
        super().__init__(f"postgresql://{SERVER_USER}:{self.password}@127.0.0.1:{self.port}/postgres")

    @staticmethod
    def _unprivileged_user():
        """The user to run PostgreSQL as when we are root (it refuses root), else None."""
        if os.geteuid() != 0:
            return None
        for name in ("postgres", "nobody"):
            try:
                return pwd.getpwnam(name)
            except KeyError:
                continue
        pytest.fail("running as root, and no 'postgres' or 'nobody' user to run PostgreSQL as")

    def _run_as(self):
        if not self._user:
            return {}
        return {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}

    def _initdb(self):
        pwfile = os.path.join(self.dir, "pwfile")
        with open(pwfile, "w") as out:
            out.write(self.password + "\n")
        if self._user:
            os.chown(pwfile, self._user.pw_uid, self._user.pw_gid)
        command = [os.path.join(self.bindir, "initdb"), "-D", os.path.join(self.dir, "data"),
                   "-U", SERVER_USER, f"--pwfile={pwfile}", "--auth-host=scram-sha-256",
                   "--auth-local=trust", "-E", "UTF8", "--locale=C", "--no-sync"]
        done = subprocess.run(command, cwd=self.dir, capture_output=True, text=True, timeout=120,
                              **self._run_as())
        if done.returncode:
            pytest.fail(f"initdb failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")

    def _start(self):
        """Start postgres on a free port, retrying if another process took the port first."""
        for _ in range(3):
            self.port = free_port()
            options = [f"-c{k}={v}" for k, v in SERVER_SETTINGS.items()
                       if not (self.durable and k in SPEED_OVER_DURABILITY)]
            command = [os.path.join(self.bindir, "postgres"), "-D", os.path.join(self.dir, "data"),
                       "-p", str(self.port), "-k", self.dir, *options]
            log = open(os.path.join(self.dir, "server.log"), "ab")
            self.proc = subprocess.Popen(command, cwd=self.dir, stdout=log, stderr=log,
                                         start_new_session=True, **self._run_as())
            log.close()
            if wait_for(self._ready_or_dead, timeout=START_TIMEOUT) == "ready":
                return
        pytest.fail(f"PostgreSQL did not start; its log:\n{self.log()[-4000:]}")

    def _ready_or_dead(self):
        if self.proc.poll() is not None:
            return "dead"
        # postmaster.pid's last line is "ready" once it accepts connections.
        try:
            with open(os.path.join(self.dir, "data", "postmaster.pid")) as pidfile:
                lines = pidfile.read().splitlines()
        except FileNotFoundError:
            return None
        return "ready" if len(lines) >= 8 and lines[7].strip() == "ready" else None

    def log(self):
        """The server's log so far."""
        try:
            with open(os.path.join(self.dir, "server.log"), errors="replace") as src:
                return src.read()
        except FileNotFoundError:
            return ""

    def stop(self):
        """Fast shutdown (SIGINT), SIGKILL if it lingers; remove the directory."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def start_server():
    """(Server, stop function) for the session: FLEET_TEST_PG_URL's, or our own."""
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.fail("the PostgreSQL tests need psycopg2: "
                    "python3 -m pip install -r requirements-test.txt")
    if os.environ.get(ENV_URL):
        return Server(os.environ[ENV_URL]), lambda: None
    bindir = find_bindir()
    if bindir is None:
        pytest.fail("PostgreSQL server binaries (initdb, postgres) not found: install Debian's "
                    f"'postgresql' package, or point {ENV_URL} at a server "
                    "(postgresql://user:pass@host:port/postgres)")
    server = LocalServer(bindir)
    return server, server.stop


@pytest.fixture(scope="session")
def pg_server():
    """The session's PostgreSQL server (started on first use)."""
    server, stop = start_server()
    yield server
    stop()


def database_url(request, tmp_path, engine):
    """A fresh, empty database of `engine`; a PostgreSQL one is dropped after the test."""
    if engine == "sqlite":
        return f"sqlite:///{tmp_path / 'fleet.db'}"
    server = request.getfixturevalue("pg_server")
    name = server.create_database()
    request.addfinalizer(lambda: server.drop_database(name))
    return server.url(name)


@pytest.fixture(params=ENGINES)
def db_url(request, tmp_path):
    """A fresh, empty database URL, once per engine: sqlite:///... or postgresql://..."""
    return database_url(request, tmp_path, request.param)
