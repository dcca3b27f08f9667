"""The SQLite checkpointer (fleet.manager.store.checkpoint): the log is copied back
beside the writers, not inside their commits, and still starts over under writes."""
import sqlite3
import threading

import pytest

from fleet.manager.store.backends import FileTurn, SQLiteBackend
from fleet.manager.store.checkpoint import SAFETY_PAGES, Checkpointer, relieve
from fleet.manager.store.db import close_database, open_database
from fleet.manager.store.migrations import migrate
from fleet.manager.store.writer import IngestWriter, Report
from helpers import wait_for

ROWS = 2000             # one transaction of them dirties several hundred pages


@pytest.fixture
def path(tmp_path):
    path = str(tmp_path / "fleet.db")
    db = open_database(f"sqlite:///{path}")
    migrate(db)
    close_database(db)
    return path


def writer_connection(path: str) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode = wal")
    connection.execute("CREATE TABLE IF NOT EXISTS filler (id INTEGER PRIMARY KEY, body TEXT)")
    return connection


def write(connection: sqlite3.Connection, turn: FileTurn, round_: int) -> None:
    """One writer transaction, in the turn, rewriting ROWS rows of ~400 bytes."""
    with turn:
        connection.execute("BEGIN IMMEDIATE")
        connection.executemany("INSERT OR REPLACE INTO filler VALUES (?, ?)",
                               [(i, f"{round_:08d}" * 50) for i in range(ROWS)])
        connection.execute("COMMIT")


def log_frames(connection: sqlite3.Connection) -> int:
    """Frames in the log now (a passive checkpoint's second figure)."""
    return connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]


def test_a_relieved_writer_leaves_the_log_to_the_checkpointer(path):
    """A relieved writer's commits do not checkpoint (SQLite's default would, past
    1,000 pages, inside the commit); a round copies the whole log, and the next
    transaction starts the log over."""
    turn = FileTurn(path + "-writer.lock")
    writer = writer_connection(path)
    relieve(writer)
    assert writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == SAFETY_PAGES
    for round_ in range(12):
        write(writer, turn, round_)
    checker = sqlite3.connect(path, isolation_level=None)
    # SQLite's own checkpoints would have started the log over below 1,000 pages.
    frames = checker.execute("PRAGMA wal_checkpoint(NOOP)").fetchone()[1]
    assert frames > 1000
    assert Checkpointer(path, turn).run_once(checker)
    write(writer, turn, 99)
    assert 0 < log_frames(checker) < frames / 6     # one transaction's worth: started over
    writer.close()
    checker.close()
    turn.close()


def test_a_round_ends_inside_the_writers_turn(path):
    """The last pass of a round waits for the writers' turn: no transaction can come
    between it and the next writer, which then finds the whole log copied."""
    turn = FileTurn(path + "-writer.lock")
    writer = writer_connection(path)
    relieve(writer)
    write(writer, turn, 0)
    checker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    checkpointer = Checkpointer(path, FileTurn(path + "-writer.lock"))
    ended = []
    with turn:
        round_ = threading.Thread(target=lambda: ended.append(checkpointer.run_once(checker)))
        round_.start()
        round_.join(0.5)
        assert round_.is_alive() and not ended
    round_.join(5)
    assert ended == [True]
    writer.close()
    checker.close()
    turn.close()


def test_rounds_complete_while_a_writer_never_stops(path):
    """Under constant writes a round still ends with the whole log copied (its last
    pass waits for the writer's turn), so the log keeps starting over instead of
    growing with every transaction."""
    turn = FileTurn(path + "-writer.lock")
    checkpointer = Checkpointer(path, FileTurn(path + "-writer.lock"), interval=0.05)
    stop = threading.Event()
    written = []

    def keep_writing():
        writer = writer_connection(path)
        relieve(writer)
        while not stop.is_set():
            write(writer, turn, len(written))
            written.append(1)
        writer.close()

    thread = threading.Thread(target=keep_writing)
    thread.start()
    checkpointer.start()
    try:
        wait_for(lambda: checkpointer.rounds >= 3 and len(written) >= 30, timeout=30)
    finally:
        stop.set()
        thread.join()
        checkpointer.stop()
    checker = sqlite3.connect(path, isolation_level=None)
    per_transaction = ROWS * 400 / 4096
    assert log_frames(checker) < len(written) * per_transaction / 3
    checker.close()
    turn.close()


def test_the_ingest_writer_runs_a_checkpointer_on_a_sqlite_file_only(path):
    """The group-commit writer starts and stops a checkpointer beside it on a SQLite
    file; an in-memory database needs none."""
    db = open_database(f"sqlite:///{path}")
    writer = IngestWriter(db)
    writer.start()
    try:
        db.execute_sql("INSERT INTO node (node_id, hostname, boot_id, seq, registered_at) "
                       "VALUES ('n1', 'h', 1, 0, 1)")
        writer.submit(Report("n1", 1, None, False, [], (), 1))
        assert len([t for t in threading.enumerate() if t.name == "fleet-checkpoint"]) == 1
        memory = open_database("sqlite:///:memory:")
        backend = SQLiteBackend()
        assert backend.checkpointer(memory, backend.writer_turn(memory)) is None
    finally:
        writer.stop()
        close_database(db)
    assert wait_for(lambda: not [t for t in threading.enumerate()
                                 if t.name == "fleet-checkpoint"])
