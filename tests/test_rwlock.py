"""The reader-writer lock: shared readers, exclusive writers, writers not starved."""
import threading

import pytest

from fleet.rwlock import RWLock
from tests.helpers import wait_for


def _thread(target, *args) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


def test_readers_overlap():
    """Several readers are inside read() at the same time."""
    lock = RWLock()
    count = 4
    inside = threading.Barrier(count + 1, timeout=5)
    leave = threading.Event()

    def reader():
        with lock.read():
            inside.wait()        # only passes once all readers are inside together
            leave.wait(5)

    threads = [_thread(reader) for _ in range(count)]
    inside.wait()
    assert lock.stats()["readers"] == count
    leave.set()
    for thread in threads:
        thread.join(5)
    assert lock.stats() == {"readers": 0, "writer": 0, "readers_waiting": 0, "writers_waiting": 0}


def test_writer_excludes_readers_and_waits_for_them():
    """A writer waits for the readers inside, and readers wait for the writer."""
    lock = RWLock()
    reader_in, reader_go, writer_in, writer_go = (threading.Event() for _ in range(4))
    order = []

    def reader():
        with lock.read():
            reader_in.set()
            reader_go.wait(5)
            order.append("reader-out")

    def writer():
        with lock.write():
            order.append("writer-in")
            writer_in.set()
            writer_go.wait(5)
            order.append("writer-out")

    _thread(reader)
    assert reader_in.wait(5)
    w = _thread(writer)
    wait_for(lambda: lock.stats()["writers_waiting"] == 1)
    assert not writer_in.is_set()
    reader_go.set()
    assert writer_in.wait(5)
    late = _thread(lambda: (lock.acquire_read(), order.append("late-reader"), lock.release_read()))
    wait_for(lambda: lock.stats()["readers_waiting"] == 1)
    assert "late-reader" not in order
    writer_go.set()
    w.join(5)
    late.join(5)
    assert order == ["reader-out", "writer-in", "writer-out", "late-reader"]


def test_waiting_writer_goes_before_new_readers():
    """Readers arriving after a waiting writer queue behind it: no writer starvation."""
    lock = RWLock()
    first_in, first_go = threading.Event(), threading.Event()
    order = []

    def first_reader():
        with lock.read():
            first_in.set()
            first_go.wait(5)

    def writer():
        with lock.write():
            order.append("writer")

    def new_reader(n):
        with lock.read():
            order.append(f"reader{n}")

    _thread(first_reader)
    assert first_in.wait(5)
    w = _thread(writer)
    wait_for(lambda: lock.stats()["writers_waiting"] == 1)
    readers = [_thread(new_reader, n) for n in range(5)]
    wait_for(lambda: lock.stats()["readers_waiting"] == 5)
    assert order == []                  # the writer's wait holds the new readers back
    first_go.set()
    w.join(5)
    for thread in readers:
        thread.join(5)
    assert order[0] == "writer" and sorted(order[1:]) == [f"reader{n}" for n in range(5)]


def test_writers_are_mutually_exclusive_under_load():
    """Writers never overlap each other or a reader, over many threads and rounds."""
    lock = RWLock()
    state = {"readers": 0, "writers": 0}
    guard = threading.Lock()
    errors = []

    def enter(kind):
        with guard:
            state[kind] += 1
            if state["writers"] > 1 or (state["writers"] and state["readers"]):
                errors.append(dict(state))

    def leave(kind):
        with guard:
            state[kind] -= 1

    def worker(n):
        for i in range(2000):
            kind = "writers" if (i + n) % 10 == 0 else "readers"
            with lock.write() if kind == "writers" else lock.read():
                enter(kind)
                leave(kind)

    threads = [_thread(worker, n) for n in range(8)]
    for thread in threads:
        thread.join(30)
    assert not any(t.is_alive() for t in threads)
    assert errors == []


def test_release_without_acquire_is_an_error():
    """Releasing a lock not held raises instead of corrupting the counts."""
    lock = RWLock()
    with pytest.raises(RuntimeError):
        lock.release_read()
    with pytest.raises(RuntimeError):
        lock.release_write()
