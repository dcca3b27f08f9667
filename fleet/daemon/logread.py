"""Reading an agent's log: ``tail`` backwards from the end, ``read_from`` forwards.

``tail`` reads backwards from the end in fixed blocks, so its cost depends on
the lines asked for, not on the file size; it follows the rotated backups
``<id>.log.1 ...`` so a line split by a rotation comes back whole.
``read_from`` reads forwards from a byte offset a follower got from the
previous call (``logs -f``): only whole lines, so a line still being written
comes in the next call. Both cut each line at MAX_LINE_BYTES, replace invalid
UTF-8, and stop at MAX_RESPONSE_BYTES.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator

from fleet.errors import InvalidArgument

log = logging.getLogger(__name__)

BLOCK_BYTES = 64 * 1024            # one pread while reading backwards
MAX_LINE_BYTES = 8 * 1024          # each returned line is cut to this (before decoding)
MAX_RESPONSE_BYTES = 1024 * 1024   # UTF-8 bytes of all returned lines together
MAX_TAIL_LINES = 1000
# Bounds the work of one tail: a grep that never matches, or a file that is one
# endless line, must not read a whole 1 GB log. Above the default total of
# log_max_bytes * (log_backups + 1) = 60 MiB, so a grep over default logs is complete.
MAX_SCAN_BYTES = 128 * 1024 * 1024
# The same bound for one forward read: a follower calls again at once when it is hit.
MAX_FORWARD_SCAN_BYTES = 16 * 1024 * 1024


# --------------------------------------------------------------------------- tail

class _Budget:
    """How many more bytes one tail may read; ``hit`` records that it ran out."""

    def __init__(self, limit: int) -> None:
        self.remaining = limit
        self.hit = False
        self.end: int | None = None  # size of the current log when the tail began reading it


def tail(path: str, lines: int, grep: str = "", backups: int | None = None,
         *, max_scan_bytes: int = MAX_SCAN_BYTES) -> tuple[list[str], bool]:
    """Return ``(last lines, truncated)`` of the log at ``path``, oldest line first.

    Reads backwards in BLOCK_BYTES blocks from the end of ``path`` and on into
    ``path.1``, ``path.2`` ... (up to ``backups`` of them; None = until one is
    missing) while fewer than ``lines`` lines were found. The backups are the older
    part of one stream, so a line split by a rotation comes back whole. A final
    line without a newline counts. Each line is cut at MAX_LINE_BYTES, decoded with
    invalid UTF-8 replaced, and returned without its newline. With ``grep`` only
    lines containing that substring count.

    ``truncated`` is True when the lines would pass MAX_RESPONSE_BYTES (the newest
    lines are kept) or when the scan read ``max_scan_bytes`` without finding
    ``lines`` lines. A missing log gives ``([], False)``. A rotation running at
    the same moment may repeat or skip the lines it is moving.
    """
    found, truncated, _ = tail_to_end(path, lines, grep, backups, max_scan_bytes=max_scan_bytes)
    return found, truncated


def tail_to_end(path: str, lines: int, grep: str = "", backups: int | None = None,
                *, max_scan_bytes: int = MAX_SCAN_BYTES) -> tuple[list[str], bool, int]:
    """``tail`` plus the size of ``path`` the lines were read up to (0 when missing):
    the offset where a follower starts reading forwards."""
    _check_lines(lines)
    budget = _Budget(max_scan_bytes)
    found = _backward_lines(path, backups, grep.encode("utf-8"), budget)
    picked: list[str] = []
    total = 0
    truncated = False
    try:
        for raw in found:
            text = raw.decode("utf-8", "replace")
            size = len(text.encode("utf-8"))
            if total + size > MAX_RESPONSE_BYTES:
                truncated = True
                break
            picked.append(text)
            total += size
            if len(picked) == lines:
                break
    finally:
        found.close()  # closes the file still open in the generator
    picked.reverse()
    return picked, truncated or budget.hit, budget.end or 0


def _check_lines(lines: int) -> None:
    if isinstance(lines, bool) or not isinstance(lines, int) or not 1 <= lines <= MAX_TAIL_LINES:
        raise InvalidArgument(f"lines must be between 1 and {MAX_TAIL_LINES}, got {lines!r}")


def _backward_lines(path: str, backups: int | None, needle: bytes,
                    budget: _Budget) -> Iterator[bytes]:
    """Yield the raw lines (cut to MAX_LINE_BYTES) of the stream newest first.

    The stream is ``path.N + ... + path.1 + path``. ``carry`` holds the start of
    the line that continues to the left of what has been read; only its first
    MAX_LINE_BYTES matter, so it never grows past that.
    """
    carry = b""
    seen_data = False
    for fpath in _chain(path, backups):
        fd = _open_or_none(fpath)
        if fd is None:
            break  # no older file: carry is the first line of the stream
        try:
            for block in _blocks_backward(fd, budget):
                if not seen_data:
                    seen_data = True
                    if block.endswith(b"\n"):  # the last newline ends the last line
                        block = block[:-1]
                buf = block + carry
                cut = buf.find(b"\n")
                carry = buf[:MAX_LINE_BYTES if cut < 0 else min(cut, MAX_LINE_BYTES)]
                if cut >= 0:
                    yield from _complete_lines(buf, cut + 1, needle)
        finally:
            os.close(fd)
        if budget.hit:
            return  # carry is the middle of a line we never reached the start of
    if seen_data and (not needle or needle in carry):
        yield carry


def _complete_lines(buf: bytes, start: int, needle: bytes) -> Iterator[bytes]:
    """Yield the lines of ``buf[start:]`` newest first, cut, filtered by ``needle``."""
    if needle and buf.find(needle, start) < 0:
        return  # fast path for grep: nothing in this block can match
    for line in reversed(buf[start:].split(b"\n")):
        if len(line) > MAX_LINE_BYTES:
            line = line[:MAX_LINE_BYTES]
        if not needle or needle in line:
            yield line


def _chain(path: str, backups: int | None) -> Iterator[str]:
    """Yield ``path`` then its backups, newest first."""
    yield path
    numbers = itertools.count(1) if backups is None else range(1, backups + 1)
    for i in numbers:
        yield f"{path}.{i}"


def _open_or_none(path: str) -> int | None:
    """Open ``path`` read-only, or None if it does not exist."""
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None


def _blocks_backward(fd: int, budget: _Budget) -> Iterator[bytes]:
    """Yield the contents of ``fd`` in blocks from its end to its start."""
    pos = os.fstat(fd).st_size  # bytes appended after this are not ours to show
    if budget.end is None:
        budget.end = pos           # the first file read is the current log
    while pos > 0:
        if budget.remaining <= 0:
            budget.hit = True
            return
        size = min(BLOCK_BYTES, pos)
        pos -= size
        data = os.pread(fd, size, pos)
        budget.remaining -= size
        if len(data) != size:
            # Truncated by a rotation while we read it: what is left is gone.
            log.debug("tail: log shrank while reading (fd %d)", fd)
            return
        yield data


# --------------------------------------------------------------------------- follow

def read_from(path: str, offset: int, lines: int, grep: str = "",
              *, max_scan_bytes: int = MAX_FORWARD_SCAN_BYTES) -> tuple[list[str], bool, int]:
    """Return ``(lines, truncated, next_offset)``: the whole lines of ``path`` that
    start at or after byte ``offset``, oldest first, at most ``lines`` of them.

    ``next_offset`` is where the next call continues: the end of the last line
    consumed, so a final line without its newline yet comes in a later call. An
    offset inside a line skips the rest of that line. A file now shorter than
    ``offset`` was rotated by copy-truncate: it is read from 0 (what the agent
    wrote between the last read and the rotation is in ``path.1``, not shown).
    Lines are cut, decoded and filtered by ``grep`` as in ``tail``. ``truncated``
    is True when the lines stopped at MAX_RESPONSE_BYTES or the read at
    ``max_scan_bytes`` with more left: the follower calls again at once.
    """
    _check_lines(lines)
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise InvalidArgument(f"offset must be an integer >= 0, got {offset!r}")
    fd = _open_or_none(path)
    if fd is None:
        return [], False, 0
    try:
        size = os.fstat(fd).st_size  # bytes appended after this are the next call's
        if offset > size:
            log.debug("read_from %s: offset %d past size %d, rotated: from 0", path, offset, size)
            offset = 0
        reader = _ForwardReader(fd, offset, lines, grep.encode("utf-8"))
        return reader.run(min(size, offset + max_scan_bytes), size)
    finally:
        os.close(fd)


class _ForwardReader:
    """One forward read: the lines picked so far, and the line being read."""

    def __init__(self, fd: int, offset: int, lines: int, needle: bytes) -> None:
        self.fd = fd
        self.offset = offset           # where this read began
        self.wanted = lines            # at most this many lines
        self.needle = needle           # grep, as UTF-8 (b"": every line)
        self.picked: list[str] = []    # decoded lines, oldest first
        self.total = 0                 # UTF-8 bytes of picked
        self.line_start = offset       # offset of the line being read
        self.head = b""                # its first MAX_LINE_BYTES bytes
        self.full = False              # the next line would pass MAX_RESPONSE_BYTES
        # Inside a line that began before offset: the rest of it is not shown.
        self.skipping = offset > 0 and os.pread(fd, 1, offset - 1) != b"\n"

    def run(self, scan_end: int, size: int) -> tuple[list[str], bool, int]:
        """Read blocks up to ``scan_end``; stop early at the wanted count or at 1 MiB."""
        pos = self.offset
        while pos < scan_end:
            block = os.pread(self.fd, min(BLOCK_BYTES, scan_end - pos), pos)
            if not block:
                break  # truncated by a rotation meanwhile: the next call starts at 0
            if self._feed(block, pos):
                return self.picked, self.full, self.line_start
            pos += len(block)
        more = pos < size
        if more and self.line_start == self.offset:
            # One line longer than the whole scan: show its head and continue
            # inside it, so a follower always moves on.
            self._take(self.head)
            return self.picked, True, pos
        return self.picked, more, self.line_start

    def _feed(self, block: bytes, base: int) -> bool:
        """Take the lines that end in ``block`` (read at ``base``); True when done."""
        if self.needle and self.needle not in self.head + block:
            return self._pass_over(block, base)  # fast path for grep: nothing here matches
        i = 0
        while True:
            nl = block.find(b"\n", i)
            room = MAX_LINE_BYTES - len(self.head)
            if nl < 0:
                if room > 0:
                    self.head += block[i:i + room]
                return False
            if room > 0:
                self.head += block[i:min(nl, i + room)]
            if not self._take(self.head):
                self.full = True
                return True
            self.line_start, self.head, i = base + nl + 1, b"", nl + 1
            if len(self.picked) == self.wanted:
                return True

    def _pass_over(self, block: bytes, base: int) -> bool:
        """Consume the lines ending in ``block`` without looking at them."""
        last = block.rfind(b"\n")
        if last < 0:
            self.head += block[:MAX_LINE_BYTES - len(self.head)]
        else:
            self.skipping = False
            self.line_start = base + last + 1
            self.head = block[last + 1:last + 1 + MAX_LINE_BYTES]
        return False

    def _take(self, line: bytes) -> bool:
        """Keep a complete line unless skipped or filtered; False if it passes 1 MiB."""
        if self.skipping:
            self.skipping = False
            return True
        if self.needle and self.needle not in line:
            return True
        text = line.decode("utf-8", "replace")
        size = len(text.encode("utf-8"))
        if self.total + size > MAX_RESPONSE_BYTES:
            return False
        self.picked.append(text)
        self.total += size
        return True
