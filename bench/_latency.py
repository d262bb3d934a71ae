"""Latency samples of the interference benchmarks (`bulk_interference`, `noisy_tenant`)."""

from __future__ import annotations

import statistics

__all__ = ["summary"]


def summary(samples: list[float]) -> dict[str, float]:
    """Calls, median and nearest-rank p99 of latencies in milliseconds (rounded to 0.01)."""
    ordered = sorted(samples)
    return {
        "calls": len(ordered),
        "p50_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
    }
