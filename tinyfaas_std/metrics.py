"""Metrics for Prometheus (SPEC 12): counters kept as calls happen, written in the text format 0.0.4 on demand.

Strategy: `Metrics` is the one owner of the counters, behind its own lock; the hot path adds to them with one
short locked update per call (`call`) and per answer (`answer`). What is already counted elsewhere (workers per
function, async queue depth, the number of functions, the process's CPU and memory) is asked for when `/metrics`
is read, and passed to `render`, never mirrored here. `render` is pure formatting: names, labels escaped
as the format requires, histogram buckets cumulative with `+Inf`, counters since the server started.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterable
from typing import Any

__all__ = ["Metrics", "CONTENT_TYPE", "BUCKETS"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)  # seconds: calls last ms to s


class _Histogram:
    __slots__ = ("counts", "total", "count")

    def __init__(self) -> None:
        self.counts = [0] * len(BUCKETS)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(BUCKETS):
            if value <= bound:
                self.counts[i] += 1
                break
        self.total += value
        self.count += 1


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: collections.Counter[tuple[str, str]] = collections.Counter()  # (function, status)
        self._durations: dict[str, _Histogram] = {}
        self._answers: collections.Counter[int] = collections.Counter()             # HTTP status code

    def call(self, function: str, status: str, seconds: float) -> None:
        with self._lock:
            self._calls[(function, status)] += 1
            histogram = self._durations.get(function)
            if histogram is None:
                histogram = self._durations[function] = _Histogram()
            histogram.observe(seconds)

    def answer(self, code: int) -> None:
        with self._lock:
            self._answers[code] += 1

    def forget(self, function: str) -> None:
        """A deleted function's series go (a function made again under its name starts from zero)."""
        with self._lock:
            for key in [key for key in self._calls if key[0] == function]:
                del self._calls[key]
            self._durations.pop(function, None)

    def render(self, gauges: dict[str, Any]) -> bytes:
        """The text format. `gauges`: workers and queue depth per function, functions, cpu and rss of the process."""
        with self._lock:
            calls = sorted(self._calls.items())
            durations = sorted((name, list(h.counts), h.total, h.count) for name, h in self._durations.items())
            answers = sorted(self._answers.items())
        out: list[str] = []
        _family(out, "tinyfaas_function_invocations_total", "counter", "Calls that ended, by function and status.",
                ((f'{{function="{_esc(f)}",status="{_esc(s)}"}}', n) for (f, s), n in calls))
        out += ["# HELP tinyfaas_function_duration_seconds How long calls took, by function.",
                "# TYPE tinyfaas_function_duration_seconds histogram"]
        for name, counts, total, count in durations:
            running = 0
            for bound, n in zip(BUCKETS, counts):
                running += n
                out.append(f'tinyfaas_function_duration_seconds_bucket{{function="{_esc(name)}",le="{bound:g}"}} '
                           f"{running}")
            out.append(f'tinyfaas_function_duration_seconds_bucket{{function="{_esc(name)}",le="+Inf"}} {count}')
            out.append(f'tinyfaas_function_duration_seconds_sum{{function="{_esc(name)}"}} {total:.6f}')
            out.append(f'tinyfaas_function_duration_seconds_count{{function="{_esc(name)}"}} {count}')
        _family(out, "tinyfaas_function_workers", "gauge", "Worker processes alive, by function.",
                ((f'{{function="{_esc(f)}"}}', n) for f, n in sorted(gauges["workers"].items())))
        _family(out, "tinyfaas_async_queue_depth", "gauge", "Async calls waiting, by function.",
                ((f'{{function="{_esc(f)}"}}', n) for f, n in sorted(gauges["queue"].items())))
        _family(out, "tinyfaas_http_requests_total", "counter", "Answers sent, by HTTP status code.",
                ((f'{{code="{code}"}}', n) for code, n in answers))
        _family(out, "tinyfaas_functions", "gauge", "Functions deployed.", [("", gauges["functions"])])
        _family(out, "process_cpu_seconds_total", "counter", "CPU time of the server process, user and system.",
                [("", f"{gauges['cpu_seconds']:.3f}")])
        _family(out, "process_resident_memory_bytes", "gauge", "Resident memory of the server process.",
                [("", gauges["rss_bytes"])])
        return ("\n".join(out) + "\n").encode()


def _family(out: list[str], name: str, kind: str, text: str, samples: Iterable[tuple[str, Any]]) -> None:
    out += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
    out += [f"{name}{labels} {value}" for labels, value in samples]


def _esc(value: str) -> str:
    """A label value as the text format writes it: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

