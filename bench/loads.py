"""The protocol between bench_scale.py and its simulator processes (its grpcio client,
bench/h2_daemons.py): once registered, the simulator prints "ready"; then for each
stdin line, `saturation SECONDS` or `steady SECONDS PERIOD`, it runs that load and
prints one JSON line {latencies (s), errors, cpu (s), elapsed (s)}."""
from __future__ import annotations

import json
import sys
import time
from typing import Callable


def serve(saturation: Callable[[float, dict], None],
          steady: Callable[[float, float, dict], None]) -> None:
    """Answer bench_scale.py's load lines until stdin ends; `out` collects
    "latencies" (seconds, of the calls that succeeded) and "errors" (their names)."""
    print("ready", flush=True)
    for line in sys.stdin:
        shape, *numbers = line.split()
        out: dict = {"latencies": [], "errors": []}
        cpu, began = time.process_time(), time.perf_counter()
        if shape == "saturation":
            saturation(float(numbers[0]), out)
        else:
            steady(float(numbers[0]), float(numbers[1]), out)
        out["cpu"] = time.process_time() - cpu
        out["elapsed"] = time.perf_counter() - began
        print(json.dumps(out), flush=True)
