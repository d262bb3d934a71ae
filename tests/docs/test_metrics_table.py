"""docs/operations.md's metric table is the one list of the server's metrics: it names exactly
the metrics `flowstate.server.metrics.Metrics` registers (as they appear on /metrics)."""

from __future__ import annotations

import re
from pathlib import Path

from flowstate.server.metrics import Metrics

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
ROW = re.compile(r"^\| `(flowstate_\w+)` \|")


def _documented() -> list[str]:
    text = OPERATIONS.read_text(encoding="utf-8")
    section = text.split("\n## Metrics\n", 1)[1]
    section = re.split(r"\n#{2,3} ", section, maxsplit=1)[0]
    return [m.group(1) for line in section.splitlines() if (m := ROW.match(line))]


def _registered() -> set[str]:
    # prometheus_client names a counter's family without ``_total``; /metrics shows it with.
    return {
        f"{family.name}_total" if family.type == "counter" else family.name
        for family in Metrics().registry.collect()
    }


def test_the_operations_metric_table_lists_every_registered_metric_once() -> None:
    documented = _documented()
    assert len(documented) == len(set(documented)), "a metric is listed twice"
    registered = _registered()
    assert sorted(registered - set(documented)) == [], "registered but not in docs/operations.md"
    assert sorted(set(documented) - registered) == [], "in docs/operations.md but not registered"
