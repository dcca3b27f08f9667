"""How ctl shows things: aligned tables, relative and absolute times, sizes."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, TextIO


@dataclass(frozen=True)
class Column:
    """One table column: its header, how a row shows in it, and its alignment."""
    header: str
    value: Callable[[dict], str]
    right: bool = False        # numbers are right-aligned


class Table:
    """Prints rows under a header with column widths taken from the content.

    Rows come in batches (the pages of a list): each batch is printed at once,
    so 100,000 agents are never held together. Widths are those of the first
    batch, grown (never shrunk) by later ones.
    """

    def __init__(self, columns: list[Column], out: TextIO = sys.stdout):
        self.columns = columns
        self.out = out
        self.widths = [len(c.header) for c in columns]
        self.rows = 0              # rows printed so far
        self._header_done = False

    def add(self, items: Iterable[dict]) -> None:
        """Print one batch of rows (the header before the first)."""
        cells = [[c.value(item) for c in self.columns] for item in items]
        for row in cells:
            self.widths = [max(w, len(cell)) for w, cell in zip(self.widths, row)]
        if not self._header_done:
            self._line([c.header for c in self.columns])
            self._header_done = True
        for row in cells:
            self._line(row)
        self.rows += len(cells)

    def _line(self, cells: list[str]) -> None:
        parts = []
        for column, width, cell in zip(self.columns, self.widths, cells):
            parts.append(cell.rjust(width) if column.right else cell.ljust(width))
        print("  ".join(parts).rstrip(), file=self.out)


def table(columns: list[Column], items: Iterable[dict], out: TextIO = sys.stdout) -> Table:
    """Print `items` as one table; the Table (its .rows) afterwards."""
    printed = Table(columns, out)
    printed.add(items)
    return printed


def ago(ms: Optional[int], now: Optional[float] = None) -> str:
    """A Unix-ms time relative to now: "12s ago", "5m ago", "in 3s"; ISO past a day; "-" unset."""
    if not ms:
        return "-"
    now = time.time() if now is None else now
    delta = now - ms / 1000.0
    if abs(delta) >= 86400:
        return iso(ms)
    text = duration(abs(delta))
    return f"{text} ago" if delta >= 0 else f"in {text}"


def duration(seconds: float) -> str:
    """Seconds in the largest unit that fits, with the next one: 45s, 5m12s, 3h04m, 2d05h."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def iso(ms: Optional[int]) -> str:
    """A Unix-ms time as local ISO date and time to the second; "-" unset."""
    if not ms:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000.0))


def size(value: Optional[float]) -> str:
    """Bytes in binary units: 512B, 12.3MiB; "-" for None."""
    if value is None:
        return "-"
    value = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return "-"


def number(value, digits: int = 0) -> str:
    """A number, "-" for None."""
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if digits else str(value)


def labels(values: Optional[dict]) -> str:
    """k=v,k2=v2 sorted by key; "-" for none."""
    if not values:
        return "-"
    return ",".join(f"{k}={v}" for k, v in sorted(values.items()))
