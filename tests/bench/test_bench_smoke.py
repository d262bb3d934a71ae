"""Smoke test of the benchmark: ``python -m bench.run --smoke`` runs every scenario once.

About a second per scenario at tiny concurrency, against its own embedded PostgreSQL (or
``FLOWSTATE_TEST_DATABASE_URL``'s server), a real ``flowstate serve`` and the Go load generator.
It checks that the report is well-formed and that every scenario measured something on both
sides without errors. No timing assertions: this machine's figures are for bench/RESULTS.md.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("go") is None, reason="the bench's load generator needs Go"),
]

GROUPS = {
    "transition/distinct/",
    "transition/distinct-full-sql/",
    "transition/grpc-raw/",
    "transition/hot/",
    "validate/",
    "getflow/",
    "getflow/grpc-raw/",
    "fanout/",
    "idle-memory/",
}
KEYS = {
    "unary": ("throughput", "p50_ms", "p99_ms"),
    "fanout": ("all_p50_ms", "all_p99_ms", "each_p99_ms"),
    "memory": ("kib_per_stream",),
}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "results.json"
    env = dict(os.environ)
    if os.environ.get("FLOWSTATE_TEST_DATABASE_URL"):
        env["FLOWSTATE_BENCH_DATABASE_URL"] = os.environ["FLOWSTATE_TEST_DATABASE_URL"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.run", "--smoke", "--out", str(out)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        # SIGTERM lets the bench stop the servers and PostgreSQL it started.
        proc.terminate()
        stdout, stderr = proc.communicate(timeout=60)
        pytest.fail(f"bench --smoke did not finish in 240 s:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    output = f"{stdout[-3000:]}\n{stderr[-3000:]}"
    assert proc.returncode == 0, f"bench failed:\n{output}"
    assert "targets:" in stdout  # the table was printed
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def test_report_has_its_header(report: dict[str, Any]) -> None:
    assert report["schema"] == "flowstate-bench/1"
    assert report["config"]["smoke"] is True
    assert report["machine"]["nproc"] >= 1
    assert report["machine"]["postgres"]
    assert set(report["targets"]) == {"met", "missed", "unmeasured"}


def test_every_scenario_group_ran(report: dict[str, Any]) -> None:
    ids = [s["id"] for s in report["scenarios"]]
    for group in GROUPS:
        assert any(i.startswith(group) for i in ids), f"no {group} scenario in {ids}"


@pytest.mark.parametrize("side", ["subject", "reference"])
def test_both_sides_measured_every_scenario(report: dict[str, Any], side: str) -> None:
    for scenario in report["scenarios"]:
        assert scenario["skipped"] is None, f"{scenario['id']}: {scenario['skipped']}"
        assert not scenario["failures"], f"{scenario['id']}: {scenario['failures']}"
        runs = scenario[side]["runs"]
        median = scenario[side]["median"]
        assert len(runs) == report["config"]["runs"], scenario["id"]
        for key in KEYS[scenario["kind"]]:
            assert _finite(median[key]), f"{scenario['id']} {side} {key}: {median[key]}"
        if scenario["kind"] == "unary":
            assert median["requests"] > 0, scenario["id"]
            assert median["errors"] == 0, (scenario["id"], runs[-1].get("error_samples"))
        if scenario["kind"] == "fanout":
            assert median["errors"] == 0, (scenario["id"], runs[-1].get("error_samples"))
            assert median["missed_deliveries"] == 0, scenario["id"]


def test_ratios_are_computed(report: dict[str, Any]) -> None:
    for scenario in report["scenarios"]:
        if scenario["kind"] != "memory":  # an RSS delta may be <= 0 at smoke sizes
            assert scenario["ratio"], scenario["id"]
        assert all(_finite(v) and v > 0 for v in scenario["ratio"].values()), scenario["id"]
