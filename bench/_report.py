"""The bench report: medians over runs, ratios to the references, targets, table and JSON."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.run import Scenario

SCHEMA = "flowstate-bench/1"

MEDIAN_KEYS = {
    "unary": (
        "throughput",
        "p50_ms",
        "p99_ms",
        "mean_ms",
        "process_cpu_us",
        "postgres_cpu_us",
        "loadgen_cpu_us",
    ),
    "fanout": (
        "all_p50_ms",
        "all_p99_ms",
        "first_p50_ms",
        "each_p50_ms",
        "each_p99_ms",
        "write_p50_ms",
        "events",
        "setup_s",
    ),
    "memory": ("kib_per_stream", "rss_before_mib", "rss_during_mib", "setup_s"),
}
SUM_KEYS = {
    "unary": ("requests", "errors"),
    "fanout": ("errors", "missed_deliveries"),
    "memory": (),
}
RATIO_KEYS = {
    # ratio name -> metric it divides (subject / reference)
    "unary": {"throughput": "throughput", "p50": "p50_ms", "p99": "p99_ms"},
    "fanout": {"p50": "all_p50_ms", "p99": "all_p99_ms"},
    "memory": {"kib_per_stream": "kib_per_stream"},
}


def summarize(kind: str, runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Median of each figure over the runs; sums of the counters."""
    median: dict[str, Any] = {}
    for key in MEDIAN_KEYS[kind]:
        values = [float(r[key]) for r in runs if isinstance(r.get(key), int | float)]
        median[key] = statistics.median(values) if values else None
    for key in SUM_KEYS[kind]:
        median[key] = sum(int(r.get(key) or 0) for r in runs)
    if kind == "fanout":
        # A run has only tens of events: pool them, so that p99 is not just one run's maximum.
        pooled = sorted(float(v) for r in runs for v in (r.get("all_ms") or []))
        if pooled:
            median["all_p50_ms"] = nearest_rank(pooled, 50)
            median["all_p99_ms"] = nearest_rank(pooled, 99)
            median["events_pooled"] = len(pooled)
    return median


def nearest_rank(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (as the load generators compute it)."""
    rank = max(0, min(len(sorted_values) - 1, math.ceil(p / 100 * len(sorted_values)) - 1))
    return sorted_values[rank]


def ratios(kind: str, subject: dict[str, Any], reference: dict[str, Any]) -> dict[str, float]:
    """subject / reference for each ratio of the kind (missing when either side is missing)."""
    out: dict[str, float] = {}
    for name, key in RATIO_KEYS[kind].items():
        s, r = subject.get(key), reference.get(key)
        if isinstance(s, int | float) and isinstance(r, int | float) and r > 0:
            out[name] = s / r
    return out


def build(
    config: dict[str, Any],
    machine: dict[str, Any],
    scenarios: Sequence[Scenario],
    elapsed: float,
) -> dict[str, Any]:
    """The JSON report."""
    rows = []
    met = missed = unmeasured = 0
    for s in scenarios:
        subject = summarize(s.kind, s.subject_runs) if s.subject_runs else None
        reference = summarize(s.kind, s.reference_runs) if s.reference_runs else None
        ratio = ratios(s.kind, subject, reference) if subject and reference else {}
        target = None
        if s.target is not None:
            verdict: bool | None = None
            if subject is not None and reference is not None:
                verdict = bool(s.target.check(subject, reference, ratio))
            target = {"text": s.target.text, "met": verdict}
            if verdict is None:
                unmeasured += 1
            elif verdict:
                met += 1
            else:
                missed += 1
        rows.append(
            {
                "id": s.id,
                "group": s.group,
                "kind": s.kind,
                "param": s.param,
                "subject_label": s.subject_label,
                "reference_label": s.reference_label,
                "skipped": s.skip_reason or None,
                "failures": list(s.failures),
                "notes": s.notes,
                "subject": {"runs": s.subject_runs, "median": subject},
                "reference": {"runs": s.reference_runs, "median": reference},
                "ratio": ratio,
                "target": target,
            }
        )
    return {
        "schema": SCHEMA,
        "config": config,
        "machine": machine,
        "elapsed_s": round(elapsed, 1),
        "scenarios": rows,
        "targets": {"met": met, "missed": missed, "unmeasured": unmeasured},
    }


# --- formatting ---------------------------------------------------------------------------------


def _num(value: Any, fmt: str = "{:.1f}") -> str:
    if not isinstance(value, int | float) or math.isnan(value):
        return "-"
    return fmt.format(value)


def _side(kind: str, m: dict[str, Any] | None) -> tuple[str, str, str, str]:
    """(primary figure, p50, p99, CPU per request) of one side."""
    if not m:
        return ("-", "-", "-", "-")
    if kind == "unary":
        cpu = _num(m.get("process_cpu_us"), "{:.0f}")
        if isinstance(m.get("postgres_cpu_us"), int | float):
            cpu += "+" + _num(m.get("postgres_cpu_us"), "{:.0f}")
        return (
            _num(m.get("throughput"), "{:.0f}/s"),
            _num(m.get("p50_ms"), "{:.2f}"),
            _num(m.get("p99_ms"), "{:.2f}"),
            cpu,
        )
    if kind == "fanout":
        return (
            "",
            _num(m.get("all_p50_ms"), "{:.2f}"),
            _num(m.get("all_p99_ms"), "{:.2f}"),
            "",
        )
    return (_num(m.get("kib_per_stream"), "{:.1f} KiB"), "", "", "")


def _ratio_cells(kind: str, ratio: dict[str, float]) -> tuple[str, str]:
    if kind == "unary":
        return (_num(ratio.get("throughput"), "{:.0%}"), _num(ratio.get("p99"), "{:.2f}x"))
    if kind == "fanout":
        return ("", _num(ratio.get("p99"), "{:.2f}x"))
    return (_num(ratio.get("kib_per_stream"), "{:.2f}x"), "")


HEADER = (
    "scenario",
    "Flowstate",
    "p50 ms",
    "p99 ms",
    "CPU us/req",
    "reference",
    "p50 ms",
    "p99 ms",
    "CPU us/req",
    "thr ratio",
    "p99 ratio",
    "target",
)


def rows(report: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row of cells per scenario."""
    out: list[tuple[str, ...]] = []
    for s in report["scenarios"]:
        kind = s["kind"]
        subj = _side(kind, s["subject"]["median"])
        ref = _side(kind, s["reference"]["median"])
        thr, p99 = _ratio_cells(kind, s["ratio"])
        target = ""
        if s["target"] is not None:
            verdict = s["target"]["met"]
            mark = "n/a" if verdict is None else ("MET" if verdict else "MISSED")
            target = f"{mark}: {s['target']['text']}"
        name = s["id"]
        if s["skipped"]:
            name += " (Flowstate skipped)"
        if s.get("failures"):
            name += f" [{len(s['failures'])} failed runs]"
        errors = (s["subject"]["median"] or {}).get("errors") or 0
        if errors:
            name += f" [{errors} errors]"
        out.append((name, *subj, *ref, thr, p99, target))
    return out


CPU_NOTE = (
    "CPU us/req: CPU time per request of the server process (for raw references: the asyncpg "
    "client process) + of PostgreSQL, microseconds."
)


def table(report: dict[str, Any]) -> str:
    """A plain-text table of the medians."""
    body = [HEADER, *rows(report)]
    widths = [max(len(r[i]) for r in body) for i in range(len(HEADER))]
    lines = []
    for i, r in enumerate(body):
        lines.append("  ".join(cell.ljust(widths[j]) for j, cell in enumerate(r)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    t = report["targets"]
    lines.append("")
    for s in report["scenarios"]:
        for failure in s.get("failures") or ():
            lines.append(f"FAILED {s['id']} {failure[:300]}")
    lines.append(CPU_NOTE)
    lines.append(
        f"targets: {t['met']} met, {t['missed']} missed, {t['unmeasured']} not measured; "
        f"{report['elapsed_s']} s in all"
    )
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    """The same table in Markdown."""
    lines = [
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    for r in rows(report):
        lines.append("| " + " | ".join(cell or " " for cell in r) + " |")
    return "\n".join(lines) + "\n\n" + CPU_NOTE + "\n"


def one_line(s: Scenario) -> str:
    """Progress line after a run: the last figures of both sides."""
    parts = []
    for label, runs in (("flowstate", s.subject_runs), ("reference", s.reference_runs)):
        if not runs:
            continue
        r = runs[-1]
        if s.kind == "unary":
            parts.append(
                f"{label} {r.get('throughput', 0):.0f}/s p99 {r.get('p99_ms', 0):.2f} ms"
                + (f" ({r['errors']} errors: {r.get('error_samples')})" if r.get("errors") else "")
            )
        elif s.kind == "fanout":
            parts.append(
                f"{label} all p50 {r.get('all_p50_ms', 0):.2f} p99 {r.get('all_p99_ms', 0):.2f} ms"
            )
        else:
            parts.append(f"{label} {r.get('kib_per_stream', 0):.1f} KiB/stream")
    return "; ".join(parts) or "skipped"
