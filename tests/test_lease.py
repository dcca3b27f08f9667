"""Leases: one holder at a time per named duty, through the database (SQLite and PostgreSQL)."""
import threading

from fleet.manager.store.db import close_database, open_database
from fleet.manager.store.migrations import migrate
from fleet.manager.store.lease import Lease, holder_name


class Clock:
    def __init__(self, now=1_700_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


def two_managers(url, clock, ttl=30.0):
    """Two holders of lease 'purge', each on its own connection to one database."""
    migrate(open_database(url))
    return [Lease(open_database(url), "purge", holder, ttl, clock) for holder in ("m1", "m2")]


def test_one_holder_at_a_time_until_it_expires(db_url):
    """The first taker holds it; the other is refused while it is fresh, takes it after."""
    clock = Clock()
    first, second = two_managers(db_url, clock)
    assert first.acquire() and not second.acquire()
    clock.now += 20
    assert first.acquire(), "the holder renews"
    clock.now += 29
    assert not second.acquire(), "renewed 29 s ago with a 30 s lease"
    clock.now += 2
    assert second.acquire() and not first.acquire()
    assert first.holder_now()[0] == "m2"


def test_release_hands_the_lease_over_at_once(db_url):
    """A clean stop releases the lease; another manager takes it without waiting."""
    clock = Clock()
    first, second = two_managers(db_url, clock)
    assert first.acquire()
    second.release()                    # not the holder: nothing happens
    assert not second.acquire()
    first.release()
    assert second.acquire()


def test_racing_takers_never_both_win(db_url):
    """Eight threads on their own connections race for an expired lease, round after
    round: exactly one wins each round (PostgreSQL: the guarded UPDATE locks the row, and
    a waiting taker re-checks the guard on the winner's row)."""
    clock = Clock()
    url = db_url
    migrate(open_database(url))
    leases = [Lease(open_database(url), "rollouts", f"m{i}", 30.0, clock) for i in range(8)]
    for _ in range(10):
        clock.now += 31
        wins, barrier = [], threading.Barrier(len(leases))

        def take(lease):
            barrier.wait()
            if lease.acquire():
                wins.append(lease.holder)
            close_database(lease._db)

        threads = [threading.Thread(target=take, args=(lease,)) for lease in leases]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(wins) == 1, wins


def test_holder_names_differ_between_managers():
    """Two managers in one process still get different holder names."""
    assert holder_name() != holder_name()
