"""An agent's metrics history on disk: ``state_dir/metrics/<id>.metrics``.

One compact binary file per agent, written atomically (temp file, rename): a
header, the sample ring's columns oldest first, the minute ring's columns in
slot order, and a CRC-32 of all that. Column layouts are recorded and checked,
so a file from another layout, a truncated or a corrupt one is refused whole
(``BadHistory``) and the daemon starts that agent's history afresh.
"""
from __future__ import annotations

import array
import logging
import os
import struct
import sys
import zlib
from typing import NamedTuple

from fleet.daemon.statedir import write_atomic
from fleet.values import valid_agent_id

log = logging.getLogger(__name__)

MAGIC = b"FLMH"
VERSION = 1
SUFFIX = ".metrics"
# magic, version, big-endian flag, interval, minute head (-1: empty), samples, minute slots
_HEADER = struct.Struct("<4sBBdqII")
_CRC = struct.Struct("<I")
_BIG = 1 if sys.byteorder == "big" else 0


class BadHistory(ValueError):
    """A history file that cannot be used; the message says why."""


class Saved(NamedTuple):
    interval: float                 # metrics_interval the samples were taken at
    samples: list[array.array]      # the sample ring's columns, oldest first
    head: int                       # the minute ring's newest minute, -1 when empty
    minutes: list[array.array]      # the minute ring's columns, in slot order


class HistoryFiles:
    """The folder of history files; each method logs its own failures."""

    def __init__(self, folder: str) -> None:
        self.folder = folder   # state_dir/metrics

    def path(self, agent_id: str) -> str:
        return os.path.join(self.folder, agent_id + SUFFIX)

    def agent_ids(self) -> list[str]:
        """Ids of the agents with a file here (the folder is created if missing)."""
        os.makedirs(self.folder, mode=0o750, exist_ok=True)
        names = (name[:-len(SUFFIX)] for name in os.listdir(self.folder) if name.endswith(SUFFIX))
        return sorted(name for name in names if valid_agent_id(name))

    def load(self, agent_id: str, sample_codes, minute_codes) -> Saved | None:
        """The agent's saved history, or None (with a WARNING) if it cannot be used."""
        try:
            with open(self.path(agent_id), "rb") as handle:
                return decode(handle.read(), sample_codes, minute_codes)
        except (OSError, ValueError) as exc:
            log.warning("agent %s: ignoring metrics history %s: %s",
                        agent_id, self.path(agent_id), exc)
            return None

    def write(self, agent_id: str, saved: Saved) -> bool:
        try:
            os.makedirs(self.folder, mode=0o750, exist_ok=True)
            write_atomic(self.path(agent_id), encode(saved))
            return True
        except OSError as exc:
            log.error("agent %s: cannot save its metrics history: %s", agent_id, exc)
            return False

    def delete(self, agent_id: str) -> None:
        try:
            os.unlink(self.path(agent_id))
        except OSError as exc:
            log.warning("agent %s: cannot delete %s: %s", agent_id, self.path(agent_id), exc)


def encode(saved: Saved) -> bytes:
    """The file's bytes for ``saved`` (columns of equal length within each ring)."""
    layout = _layout(saved.samples, saved.minutes)
    count = len(saved.samples[0]) if saved.samples else 0
    slots = len(saved.minutes[0]) if saved.minutes else 0
    parts = [_HEADER.pack(MAGIC, VERSION, _BIG, saved.interval, saved.head, count, slots),
             bytes([len(layout)]), layout]
    parts.extend(col.tobytes() for col in saved.samples)
    parts.extend(col.tobytes() for col in saved.minutes)
    body = b"".join(parts)
    return body + _CRC.pack(zlib.crc32(body))


def decode(data: bytes, sample_codes: tuple[str, ...], minute_codes: tuple[str, ...]) -> Saved:
    """Parse a file's bytes; BadHistory unless it is whole and of the expected layout."""
    if len(data) < _HEADER.size + 1 + _CRC.size:
        raise BadHistory(f"too short ({len(data)} bytes)")
    view = memoryview(data)   # slices of a view copy nothing: a restore allocates little
    body, (crc,) = view[:-_CRC.size], _CRC.unpack(view[-_CRC.size:])
    if zlib.crc32(body) != crc:
        raise BadHistory("checksum mismatch (truncated or corrupt)")
    magic, version, big, interval, head, count, slots = _HEADER.unpack_from(body)
    if magic != MAGIC or version != VERSION:
        raise BadHistory(f"not a version {VERSION} history file")
    offset = _HEADER.size
    layout = bytes(body[offset + 1:offset + 1 + body[offset]])
    if layout != _layout_of(sample_codes, minute_codes):
        raise BadHistory(f"column layout {layout!r} is not this daemon's")
    offset += 1 + len(layout)
    samples, offset = _columns(body, offset, sample_codes, count, big)
    minutes, offset = _columns(body, offset, minute_codes, slots, big)
    if offset != len(body):
        raise BadHistory(f"{len(body) - offset} unexpected trailing bytes")
    return Saved(interval, samples, head, minutes)


def _columns(body: bytes, offset: int, codes, length: int, big: int):
    out = []
    for code in codes:
        col = array.array(code)
        end = offset + col.itemsize * length
        if end > len(body):
            raise BadHistory("shorter than its header says")
        col.frombytes(body[offset:end])
        if big != _BIG:
            col.byteswap()
        out.append(col)
        offset = end
    return out, offset


def _layout(samples, minutes) -> bytes:
    return _layout_of(tuple(c.typecode for c in samples), tuple(c.typecode for c in minutes))


def _layout_of(sample_codes, minute_codes) -> bytes:
    return ("".join(sample_codes) + "|" + "".join(minute_codes)).encode()
