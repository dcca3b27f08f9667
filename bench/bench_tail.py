"""Benchmark of fleet.daemon.logs.tail on a large log.

Writes a 200 MB log (100-byte lines) and a small one into a temporary directory,
then prints the median time of tail(1000) over 20 runs on each, and the bytes
tail read compared with the file size (counted at os.pread and, independently,
from the kernel's rchar in /proc/self/io). Run from the repo root:

    python bench/bench_tail.py
"""

import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fleet.daemon import logs  # noqa: E402  (needs the sys.path entry above)

RUNS = 20
BIG_BYTES = 200 * 1024 * 1024
LINE_PAYLOAD = 90


def write_log(path: str, total: int) -> int:
    """Write about ``total`` bytes of numbered lines; return the size written."""
    block = b"".join(b"%08d " % i + b"y" * LINE_PAYLOAD + b"\n" for i in range(655))
    if total < len(block):
        block = block[:total - total % 100]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        for _ in range(max(1, total // len(block))):
            os.write(fd, block)
        os.write(fd, b"ERROR the only error, at the very end\n")
    finally:
        os.close(fd)
    return os.path.getsize(path)


def rchar() -> int:
    """Bytes this process has read through read-like syscalls so far (Linux)."""
    try:
        with open("/proc/self/io", "rb") as f:
            for line in f:
                if line.startswith(b"rchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


class PreadCounter:
    """Wraps os.pread (what tail reads with) to count bytes."""

    def __init__(self):
        self.bytes = 0
        self._real = os.pread

    def __call__(self, fd, n, offset):
        data = self._real(fd, n, offset)
        self.bytes += len(data)
        return data


def measure(path: str, lines: int, grep: str = "") -> tuple[float, int, int, int]:
    """Median seconds of RUNS tails, pread bytes and rchar bytes of one tail, lines got."""
    times = []
    for _ in range(RUNS):
        began = time.perf_counter()
        logs.tail(path, lines, grep)
        times.append(time.perf_counter() - began)
    counter = PreadCounter()
    os.pread = counter
    try:
        before = rchar()
        got, _ = logs.tail(path, lines, grep)
        after = rchar()
    finally:
        os.pread = counter._real
    return statistics.median(times), counter.bytes, after - before, len(got)


def report(label: str, path: str, lines: int, grep: str = "") -> None:
    size = os.path.getsize(path)
    median, pread_bytes, rchar_bytes, got = measure(path, lines, grep)
    print(f"{label:<34} size={size / 1e6:8.1f} MB  lines={got:4d}  "
          f"median={median * 1000:7.2f} ms  read={pread_bytes / 1024:8.1f} KiB "
          f"(rchar {rchar_bytes / 1024:8.1f} KiB, {100 * pread_bytes / size:.4f}% of file)")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        big, small = os.path.join(tmp, "big.log"), os.path.join(tmp, "small.log")
        began = time.perf_counter()
        write_log(big, BIG_BYTES)
        print(f"wrote {os.path.getsize(big) / 1e6:.1f} MB in {time.perf_counter() - began:.2f} s")
        write_log(small, 200 * 1024)
        report("tail(1000) small log", small, 1000)
        report("tail(1000) 200 MB log", big, 1000)
        report("tail(100) 200 MB log", big, 100)
        report("tail(1000, grep=0) 200 MB log", big, 1000, "0")
        report("tail(10, grep=ERROR) 200 MB log", big, 10, "ERROR")
        print(f"(a grep matching fewer lines than asked scans until max_scan_bytes = "
              f"{logs.MAX_SCAN_BYTES // 2**20} MiB, then answers truncated=True)")


if __name__ == "__main__":
    main()
