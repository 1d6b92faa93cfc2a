"""Prometheus metrics of a serving driver, shared by the gRPC and HTTP fronts (`GET /metrics` serves them).

Gauges and counters are read from the driver and engine at scrape time, so the decode path does no bookkeeping
for them; the latency histograms are observed by the fronts, once per request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)


class _DriverCollector:
    """Queue depth, running requests, slots in use, generated tokens (a counter and a rate) at scrape time."""

    def __init__(self, driver: Any, engine: Any):
        self._driver, self._engine = driver, engine
        self._lock = threading.Lock()
        self._last = (time.monotonic(), 0)

    def _tokens_per_second(self, total: int) -> float:
        """Rate since the previous scrape (Prometheus' rate() over the counter is the better number)."""
        now = time.monotonic()
        with self._lock:
            then, before = self._last
            self._last = (now, total)
        return (total - before) / (now - then) if now > then else 0.0

    def collect(self) -> Iterator[Any]:
        load = self._driver.load()
        tokens = self._driver.generated_tokens
        for name, doc, value in (
            ("sq_jax_requests_queued", "Requests waiting for prefill or for a slot", load["queued"]),
            ("sq_jax_requests_running", "Requests decoding in a slot", load["running"]),
            ("sq_jax_slots_in_use", "Decode slots taken", load["running"]),
            ("sq_jax_slots", "Decode slots in all", load["slots"]),
            ("sq_jax_generated_tokens_per_second", "Generated tokens per second since the previous scrape",
             self._tokens_per_second(tokens)),
        ):
            yield GaugeMetricFamily(name, doc, value=value)
        yield CounterMetricFamily("sq_jax_generated_tokens", "Tokens handed to clients", value=tokens)
        stats = self._engine.stats
        yield CounterMetricFamily("sq_jax_prefills", "Prompts prefilled", value=stats["prefills"])
        yield CounterMetricFamily("sq_jax_prefix_hits", "Prefills reused from the prefix cache",
                                  value=stats["prefix_hits"])


class ServingMetrics:
    """One registry per server (tests run several in one process): driver gauges plus request histograms."""

    def __init__(self, driver: Any, engine: Any):
        self.registry = CollectorRegistry()
        self.registry.register(_DriverCollector(driver, engine))
        self.time_to_first_token = Histogram(
            "sq_jax_time_to_first_token_seconds", "From request arrival to its first generated token",
            ["front"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.latency = Histogram(
            "sq_jax_request_latency_seconds", "From request arrival to its last byte", ["front"],
            buckets=_LATENCY_BUCKETS, registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
