"""Tests of fleet.daemon.logs: rotation, tail, and the LogKeeper thread."""

import fcntl
import os
import stat
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.daemon import logs
from fleet.daemon.logs import LogKeeper, rotate_if_needed, tail
from fleet.errors import InvalidArgument
from tests.helpers import wait_for


def write(path, data: bytes, mode="ab"):
    with open(path, mode) as f:
        f.write(data)


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def expected_lines(stream: bytes) -> list[bytes]:
    """The lines of ``stream`` as tail defines them: a final newline ends the last line."""
    if not stream:
        return []
    if stream.endswith(b"\n"):
        stream = stream[:-1]
    return stream.split(b"\n")


@pytest.fixture
def log_path(tmp_path):
    return str(tmp_path / "a.log")


class ReadCounter:
    """Counts the bytes read through os.pread (tail's only way to read)."""

    def __init__(self, monkeypatch):
        self.bytes = 0
        real = os.pread

        def counting(fd, n, offset):
            data = real(fd, n, offset)
            self.bytes += len(data)
            return data

        monkeypatch.setattr(logs.os, "pread", counting)


# ---------------------------------------------------------------- tail basics

def test_tail_last_n_lines(log_path):
    """tail returns the last N lines, oldest first, without newlines."""
    write(log_path, b"".join(b"line %d\n" % i for i in range(100)))
    lines, truncated = tail(log_path, 3)
    assert lines == ["line 97", "line 98", "line 99"]
    assert truncated is False


def test_tail_fewer_lines_than_asked(log_path):
    """A log shorter than N gives all its lines."""
    write(log_path, b"a\nb\n")
    assert tail(log_path, 10) == (["a", "b"], False)


def test_tail_partial_last_line_counts(log_path):
    """A final line without a newline is a line."""
    write(log_path, b"a\nb\npartial")
    assert tail(log_path, 2) == (["b", "partial"], False)


def test_tail_keeps_empty_lines(log_path):
    """Empty lines are lines; a lone newline is one empty line."""
    write(log_path, b"\n\nx\n")
    assert tail(log_path, 10) == (["", "", "x"], False)
    write(log_path, b"\n", "wb")
    assert tail(log_path, 10) == ([""], False)


def test_tail_missing_file_is_empty(log_path):
    """A log that does not exist gives no lines."""
    assert tail(log_path, 10) == ([], False)


def test_tail_empty_file_is_empty(log_path):
    """An empty log gives no lines."""
    write(log_path, b"")
    assert tail(log_path, 10) == ([], False)


@pytest.mark.parametrize("bad", [0, -1, 1001, True, "5", 2.0])
def test_tail_rejects_bad_line_count(log_path, bad):
    """lines outside 1..1000 (or not an int) is InvalidArgument."""
    with pytest.raises(InvalidArgument):
        tail(log_path, bad)


def test_tail_lines_across_block_boundaries(log_path):
    """Lines straddling the 64 KiB read blocks come back whole."""
    data = b"".join(b"%06d-" % i + b"x" * 93 + b"\n" for i in range(3000))  # 100 B lines
    write(log_path, data)
    lines, _ = tail(log_path, 1000)
    assert [s.encode() for s in lines] == expected_lines(data)[-1000:]


def test_tail_grep_filters_while_reading(log_path):
    """grep returns the last N lines containing the substring."""
    data = b"".join(b"%s %d\n" % (b"ERROR" if i % 10 == 0 else b"info", i) for i in range(5000))
    write(log_path, data)
    lines, truncated = tail(log_path, 3, grep="ERROR")
    assert lines == ["ERROR 4970", "ERROR 4980", "ERROR 4990"]
    assert truncated is False
    assert tail(log_path, 5, grep="no such text") == ([], False)


def test_tail_grep_matches_unicode(log_path):
    """grep with non-ASCII text matches the UTF-8 bytes of a line."""
    write(log_path, "naïve\nplain\ncafé ok\n".encode())
    assert tail(log_path, 10, grep="é") == (["café ok"], False)


def test_tail_grep_is_a_plain_case_sensitive_substring(log_path):
    """grep is what the README says: case-sensitive, no regular expression or wildcard."""
    write(log_path, b"tick 1\nTick 2\ntick 10\n.*\n")
    assert tail(log_path, 10, grep="tick 1") == (["tick 1", "tick 10"], False)
    assert tail(log_path, 10, grep="TICK") == ([], False)
    assert tail(log_path, 10, grep=".*") == ([".*"], False)


def test_tail_cuts_long_lines_at_8_kib(log_path):
    """A line longer than 8 KiB is cut to its first 8192 bytes."""
    long = b"A" * 5000 + b"B" * 5000 + b"C" * 100_000
    write(log_path, b"first\n" + long + b"\nlast\n")
    lines, _ = tail(log_path, 3)
    assert lines[0] == "first"
    assert lines[1] == "A" * 5000 + "B" * 3192
    assert lines[2] == "last"


def test_tail_cut_long_partial_first_line(log_path):
    """An over-long first line of the file (no newline before it) is cut too."""
    write(log_path, b"Z" * 200_000 + b"\nend")
    assert tail(log_path, 5) == (["Z" * 8192, "end"], False)


def test_tail_replaces_invalid_utf8(log_path):
    """Invalid UTF-8 becomes U+FFFD; valid multibyte text survives."""
    write(log_path, b"ok \xff\xfe bad\n\xe2\x82\xac euro\n")
    assert tail(log_path, 2) == (["ok \ufffd\ufffd bad", "\u20ac euro"], False)


def test_tail_stops_at_1_mib_keeping_newest(log_path):
    """Over 1 MiB of lines sets truncated and keeps the newest lines."""
    data = b"".join(b"%04d" % i + b"x" * 8188 + b"\n" for i in range(200))  # 8 KiB lines
    write(log_path, data)
    lines, truncated = tail(log_path, 1000)
    assert truncated is True
    assert len(lines) == 128  # 128 * 8192 = 1 MiB exactly
    assert lines[-1].startswith("0199") and lines[0].startswith("0072")
    assert sum(len(s.encode()) for s in lines) <= logs.MAX_RESPONSE_BYTES


def test_tail_scan_budget_sets_truncated(log_path):
    """A grep that would scan past max_scan_bytes stops and says truncated."""
    write(log_path, b"needle\n" + b"hay\n" * 100_000)
    assert tail(log_path, 5, grep="needle", max_scan_bytes=64 * 1024) == ([], True)
    assert tail(log_path, 5, grep="needle") == (["needle"], False)


def test_tail_large_file_reads_only_the_end(tmp_path, monkeypatch):
    """tail(1000) of a 200 MB log reads well under 2 MiB of it."""
    path = str(tmp_path / "big.log")
    block = b"".join(b"%08d " % i + b"y" * 90 + b"\n" for i in range(655))  # ~64 KiB
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o640)
    try:
        for _ in range((200 * 1024 * 1024) // len(block)):
            os.write(fd, block)
        os.write(fd, b"the end\n")
    finally:
        os.close(fd)
    assert os.path.getsize(path) > 200_000_000
    counter = ReadCounter(monkeypatch)
    lines, truncated = tail(path, 1000)
    assert len(lines) == 1000 and lines[-1] == "the end" and not truncated
    assert lines[0] == expected_lines(block * 2)[-999].decode()
    assert counter.bytes < 2 * 1024 * 1024


# ---------------------------------------------------------------- rotation

def test_rotate_noop_under_limit(log_path):
    """A log at or under max_bytes is left alone."""
    write(log_path, b"x" * 100)
    assert rotate_if_needed(log_path, 100, 3) is False
    assert read(log_path) == b"x" * 100
    assert not os.path.exists(log_path + ".1")


def test_rotate_copies_then_truncates(log_path):
    """Rotation copies the log to .1, truncates it, and keeps the writer's fd valid."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        os.write(fd, b"old\n" * 10)
        assert rotate_if_needed(log_path, 10, 2) is True
        os.write(fd, b"new\n")  # O_APPEND: lands at offset 0 of the truncated file
    finally:
        os.close(fd)
    assert read(log_path + ".1") == b"old\n" * 10
    assert read(log_path) == b"new\n"
    assert stat.S_IMODE(os.stat(log_path + ".1").st_mode) & 0o777 == 0o640 & ~_umask()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_rotate_keeps_backups_and_drops_oldest(log_path):
    """Each rotation shifts .1 -> .2 ...; only `backups` files are kept."""
    for gen in range(5):
        write(log_path, b"gen %d\n" % gen)
        assert rotate_if_needed(log_path, 1, 3) is True
    assert read(log_path + ".1") == b"gen 4\n"
    assert read(log_path + ".2") == b"gen 3\n"
    assert read(log_path + ".3") == b"gen 2\n"
    assert not os.path.exists(log_path + ".4")
    assert read(log_path) == b""
    assert not os.path.exists(log_path + ".1.tmp")


def test_rotate_zero_backups_only_truncates(log_path):
    """backups=0 truncates the log and writes no backup."""
    write(log_path, b"x" * 50)
    assert rotate_if_needed(log_path, 10, 0) is True
    assert read(log_path) == b""
    assert not os.path.exists(log_path + ".1")


def test_rotate_without_sendfile_falls_back_to_copy(log_path, monkeypatch):
    """Where sendfile cannot copy between files, rotation copies with read/write."""
    def unsupported(*args):
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(logs.os, "sendfile", unsupported)
    data = b"".join(b"row %d\n" % i for i in range(50_000))
    write(log_path, data)
    assert rotate_if_needed(log_path, 10, 1) is True
    assert read(log_path + ".1") == data
    assert read(log_path) == b""


def test_rotate_vanished_file_does_not_raise(log_path):
    """Rotating a log that does not exist returns False."""
    assert rotate_if_needed(log_path, 10, 3) is False


def test_tail_joins_line_split_by_rotation(log_path):
    """A line half written before a rotation and half after comes back whole."""
    write(log_path, b"one\ntwo\npart")
    assert rotate_if_needed(log_path, 1, 2)
    write(log_path, b"ial\nthree\n")
    assert tail(log_path, 3) == (["two", "partial", "three"], False)
    assert tail(log_path, 10) == (["one", "two", "partial", "three"], False)


def test_tail_reads_across_several_backups(log_path):
    """tail continues into .1, .2 ... while the newer files have too few lines."""
    for gen in range(3):
        write(log_path, b"g%d a\ng%d b\n" % (gen, gen))
        rotate_if_needed(log_path, 1, 5)
    write(log_path, b"now\n")
    lines, _ = tail(log_path, 6)
    assert lines == ["g0 b", "g1 a", "g1 b", "g2 a", "g2 b", "now"]
    assert tail(log_path, 10, backups=1)[0] == ["g2 a", "g2 b", "now"]
    assert tail(log_path, 10, grep="a")[0] == ["g0 a", "g1 a", "g2 a"]


def test_tail_after_rotation_with_empty_current_log(log_path):
    """Right after a rotation the lines come from .1."""
    write(log_path, b"x\ny\n")
    rotate_if_needed(log_path, 1, 1)
    assert tail(log_path, 5) == (["x", "y"], False)


line_bytes = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"."))


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(line_bytes, max_size=60), final_newline=st.booleans(),
       cut=st.integers(min_value=0), n=st.integers(min_value=1, max_value=80),
       block=st.sampled_from([7, 64, 4096]))
def test_tail_property_matches_concatenation(tmp_path, monkeypatch, lines, final_newline,
                                             cut, n, block):
    """For any lines and rotation point, tail(N) is the last N lines of .1 + .log."""
    monkeypatch.setattr(logs, "BLOCK_BYTES", block)  # tiny blocks exercise the seams
    path = str(tmp_path / "p.log")
    for suffix in ("", ".1"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    stream = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    cut = cut % (len(stream) + 1)
    write(path + ".1", stream[:cut])
    write(path, stream[cut:])
    got, truncated = tail(path, n, backups=1)
    want = [x.decode("utf-8", "replace") for x in expected_lines(stream)[-n:]]
    assert got == want
    assert truncated is False


# ---------------------------------------------------------------- LogKeeper

def test_keeper_paths_and_fd(tmp_path):
    """open_for_agent gives an O_APPEND fd onto logs/<id>.log, mode 0640."""
    keeper = LogKeeper(str(tmp_path / "logs"))
    path = keeper.path_for("agent-1")
    assert path == str(tmp_path / "logs" / "agent-1.log")
    fd = keeper.open_for_agent("agent-1")
    try:
        os.write(fd, b"hello\n")
        assert os.O_APPEND & fcntl.fcntl(fd, fcntl.F_GETFL)
    finally:
        os.close(fd)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640 & ~_umask()
    assert keeper.tail("agent-1", 10) == (["hello"], False)


@pytest.mark.parametrize("bad", ["../etc/passwd", "", "a/b", "x" * 65, "a.b"])
def test_keeper_rejects_unsafe_ids(tmp_path, bad):
    """An agent id that could escape the logs dir is InvalidArgument."""
    keeper = LogKeeper(str(tmp_path))
    with pytest.raises(InvalidArgument):
        keeper.path_for(bad)


def test_keeper_rotate_all_only_registered(tmp_path):
    """rotate_all rotates registered agents past their limit and skips the rest."""
    keeper = LogKeeper(str(tmp_path))
    for agent in ("big", "small", "other"):
        write(keeper.path_for(agent), b"z" * 1000)
    keeper.register("big", 100, 2)
    keeper.register("small", 5000, 2)
    keeper.register("ghost", 1, 2)  # no file yet: skipped quietly
    assert keeper.rotate_all() == ["big"]
    keeper.unregister("big")
    write(keeper.path_for("big"), b"z" * 1000)
    assert keeper.rotate_all() == []


def test_keeper_thread_rotates_and_stops(tmp_path):
    """The fleet-logs thread rotates a growing log; start/stop are idempotent."""
    keeper = LogKeeper(str(tmp_path), check_interval=0.05)
    keeper.register("a", 100, 1)
    keeper.start()
    keeper.start()
    try:
        names = [t.name for t in threading.enumerate()]
        assert names.count("fleet-logs") == 1
        write(keeper.path_for("a"), b"q" * 500)
        wait_for(lambda: os.path.exists(keeper.path_for("a") + ".1"))
        assert read(keeper.path_for("a") + ".1") == b"q" * 500
    finally:
        began = time.monotonic()
        keeper.stop()
        keeper.stop()
    assert time.monotonic() - began < 1.0
    assert "fleet-logs" not in [t.name for t in threading.enumerate()]


def test_keeper_thread_survives_errors(tmp_path, monkeypatch):
    """A rotation error is logged and the thread keeps going."""
    keeper = LogKeeper(str(tmp_path), check_interval=0.01)
    calls = []

    def boom(path, max_bytes, backups):
        calls.append(path)
        raise OSError("disk on fire")

    monkeypatch.setattr(logs, "rotate_if_needed", boom)
    keeper.register("a", 1, 1)
    with open(keeper.path_for("a"), "w") as handle:
        handle.write("past max_bytes\n")
    keeper.start()
    try:
        wait_for(lambda: len(calls) >= 3)
    finally:
        keeper.stop()


# ---------------------------------------------------------------- read_from (follow)

def test_tail_to_end_gives_the_size_read_up_to(log_path):
    """A tail without offset also says where a follower starts: the log's size."""
    write(log_path, b"a\nb\n")
    assert logs.tail_to_end(log_path, 1) == (["b"], False, 4)
    assert logs.tail_to_end(log_path + ".missing", 1) == ([], False, 0)


def test_read_from_returns_only_lines_after_the_offset(log_path):
    """From a previous next_offset only the newer lines come, and next_offset moves on."""
    write(log_path, b"one\ntwo\n")
    _, _, end = logs.tail_to_end(log_path, 10)
    assert logs.read_from(log_path, end, 100) == ([], False, 8)
    write(log_path, b"three\nfour\n")
    assert logs.read_from(log_path, end, 100) == (["three", "four"], False, 19)
    assert logs.read_from(log_path, 0, 100) == (["one", "two", "three", "four"], False, 19)


def test_read_from_leaves_an_unfinished_line_for_the_next_call(log_path):
    """A final line without its newline is not returned; next_offset stays at its start."""
    write(log_path, b"done\nhalf")
    assert logs.read_from(log_path, 0, 10) == (["done"], False, 5)
    write(log_path, b" more\n")
    assert logs.read_from(log_path, 5, 10) == (["half more"], False, 15)


def test_read_from_an_offset_inside_a_line_skips_the_rest_of_it(log_path):
    """An offset in the middle of a line starts at the next whole line."""
    write(log_path, b"alpha\nbravo\ncharlie\n")
    assert logs.read_from(log_path, 8, 10) == (["charlie"], False, 20)
    assert logs.read_from(log_path, 6, 10) == (["bravo", "charlie"], False, 20)
    assert logs.read_from(log_path, 20, 10) == ([], False, 20)


def test_read_from_at_most_n_lines_then_continues(log_path):
    """At most N lines from the offset on; the next call picks up where it stopped."""
    write(log_path, b"".join(b"l%d\n" % i for i in range(10)))
    first, truncated, offset = logs.read_from(log_path, 0, 3)
    assert first == ["l0", "l1", "l2"] and not truncated and offset == 9
    assert logs.read_from(log_path, offset, 3)[0] == ["l3", "l4", "l5"]


def test_read_from_a_rotated_log_starts_again_at_0(log_path):
    """A log now shorter than the offset was rotated by copy-truncate: read from 0."""
    write(log_path, b"x" * 50 + b"\n" + b"old\n")
    _, _, end = logs.tail_to_end(log_path, 1)
    assert rotate_if_needed(log_path, 10, 1)
    write(log_path, b"new\n")
    assert logs.read_from(log_path, end, 10) == (["new"], False, 4)


def test_read_from_stops_at_1_mib_and_the_next_call_goes_on(log_path):
    """Over 1 MiB of new lines: truncated, next_offset after the last line sent, rest next."""
    data = b"".join(b"%04d" % i + b"x" * 8187 + b"\n" for i in range(200))  # 8 KiB lines
    write(log_path, data)
    lines, truncated, offset = logs.read_from(log_path, 0, 1000)
    assert truncated is True and len(lines) == 128
    assert lines[0].startswith("0000") and lines[-1].startswith("0127")
    assert offset == 128 * 8192
    rest, truncated, end = logs.read_from(log_path, offset, 1000)
    assert [line[:4] for line in rest] == ["%04d" % i for i in range(128, 200)]
    assert not truncated and end == len(data)


def test_read_from_cuts_long_lines_and_replaces_invalid_utf8(log_path):
    """Lines are cut at 8 KiB and invalid UTF-8 is replaced, as in tail."""
    write(log_path, b"A" * 20_000 + b"\nbad \xff\n")
    assert logs.read_from(log_path, 0, 10) == (["A" * 8192, "bad \ufffd"], False, 20_007)


def test_read_from_one_line_longer_than_the_scan_still_moves_on(log_path):
    """A line longer than the scan bound: its head is shown and the next call skips its rest."""
    write(log_path, b"B" * 300_000 + b"\nafter\n")
    lines, truncated, offset = logs.read_from(log_path, 0, 10, max_scan_bytes=100_000)
    assert lines == ["B" * 8192] and truncated and offset == 100_000
    lines, truncated, offset = logs.read_from(log_path, offset, 10, max_scan_bytes=100_000)
    assert lines == [] and truncated and offset == 200_000
    assert logs.read_from(log_path, offset, 10, max_scan_bytes=100_000) == ([], True, 300_000)
    assert logs.read_from(log_path, 300_000, 10, max_scan_bytes=100_000) == \
        (["after"], False, 300_007)


def test_read_from_with_grep_consumes_lines_that_do_not_match(log_path):
    """grep with an offset returns only new matching lines; next_offset passes the others."""
    write(log_path, b"".join(b"%s %d\n" % (b"ERROR" if i % 1000 == 0 else b"info", i)
                             for i in range(5000)))
    _, _, start = logs.tail_to_end(log_path, 1)
    write(log_path, b"info late\nERROR late\ninfo later\n")
    lines, truncated, offset = logs.read_from(log_path, start, 10, grep="ERROR")
    assert lines == ["ERROR late"] and not truncated and offset == os.path.getsize(log_path)
    assert logs.read_from(log_path, 0, 10, grep="ERROR")[0] == \
        ["ERROR 0", "ERROR 1000", "ERROR 2000", "ERROR 3000", "ERROR 4000", "ERROR late"]
    assert logs.read_from(log_path, 0, 2, grep="ERROR")[2] == len(b"ERROR 0\n") + sum(
        len(b"info %d\n" % i) for i in range(1, 1000)) + len(b"ERROR 1000\n")


@pytest.mark.parametrize("bad", [-1, True, "5", 2.0])
def test_read_from_rejects_a_bad_offset(log_path, bad):
    """A negative or non-integer offset is InvalidArgument."""
    with pytest.raises(InvalidArgument):
        logs.read_from(log_path, bad, 10)


def test_read_from_missing_log_is_empty(log_path):
    """No log yet: no lines, next_offset 0."""
    assert logs.read_from(log_path, 100, 10) == ([], False, 0)


def test_keeper_read_tails_or_follows(tmp_path):
    """LogKeeper.read without offset tails, with one follows."""
    keeper = LogKeeper(str(tmp_path))
    write(keeper.path_for("a"), b"1\n2\n3\n")
    assert keeper.read("a", 2) == (["2", "3"], False, 6)
    write(keeper.path_for("a"), b"4\n")
    assert keeper.read("a", 10, "", 6) == (["4"], False, 8)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"")), max_size=40),
       cuts=st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=8))
def test_read_from_following_in_steps_sees_every_line_once(tmp_path, lines, cuts):
    """Following with small N in steps, written in pieces, yields each whole line exactly once."""
    path = str(tmp_path / "follow.log")
    write(path, b"", "wb")
    stream = b"".join(line + b"\n" for line in lines)
    seen, offset, pos, step = [], 0, 0, 0
    while pos < len(stream) or offset < len(stream):
        if pos < len(stream):
            piece = max(1, len(stream) // 7)
            write(path, stream[pos:pos + piece])
            pos += piece
        got, _, offset = logs.read_from(path, offset, cuts[step % len(cuts)])
        seen.extend(got)
        step += 1
    assert seen == [line.decode("utf-8", "replace") for line in lines]
