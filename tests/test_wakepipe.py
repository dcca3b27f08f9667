"""fleet.daemon.wakepipe: the wake-up a runner or the reload worker polls beside its work."""
import select
import threading

from fleet.daemon.wakepipe import WakePipe


def polls_ready(pipe: WakePipe, timeout_ms: int) -> bool:
    poller = select.poll()
    poller.register(pipe.fd, select.POLLIN)
    return bool(poller.poll(timeout_ms))


def test_a_wake_from_another_thread_ends_a_poll_and_drain_quiets_it():
    pipe = WakePipe()
    assert not polls_ready(pipe, 0)
    threading.Timer(0.05, pipe.wake).start()
    assert polls_ready(pipe, 5000)              # woken, not timed out
    pipe.drain()
    assert not polls_ready(pipe, 0)
    pipe.close()


def test_wakes_past_a_full_pipe_neither_block_nor_raise_and_one_drain_takes_all():
    """A signal handler may wake many times before the worker runs: the pipe fills
    (a wake is pending anyway) and wake() returns at once."""
    pipe = WakePipe()
    for _ in range(200_000):                    # far more than a pipe's 64 KiB
        pipe.wake()
    assert polls_ready(pipe, 0)
    pipe.drain()
    assert not polls_ready(pipe, 0)
    pipe.close()


def test_close_twice_and_wake_after_close_are_harmless():
    pipe = WakePipe()
    pipe.close()
    pipe.close()
    pipe.wake()
    pipe.drain()
    assert pipe.closed
