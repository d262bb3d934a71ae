"""Smoke test of ``python -m bench.noisy_tenant``: one short round, the report's shape.

A real ``flowstate serve`` with a read limit, its own embedded PostgreSQL (or
``FLOWSTATE_TEST_DATABASE_URL``'s server) and the Go load generator as victim and flooder. It
checks that the flooder was limited (``limited``: its calls wait for their tokens, 4 of them are
far under rate x max wait, so none is refused; ``policed``: refused) and stopped by itself, that
the victim (under its own limit) never was, and that every figure of the report is there. No
timing assertions: the figures are for bench/RESULTS.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("go") is None, reason="the bench's load generator needs Go"),
]


def test_one_round_measures_both_phases(tmp_path: Path) -> None:
    out = tmp_path / "noisy.json"
    env = dict(os.environ)
    if os.environ.get("FLOWSTATE_TEST_DATABASE_URL"):
        env["FLOWSTATE_BENCH_DATABASE_URL"] = os.environ["FLOWSTATE_TEST_DATABASE_URL"]
    command = [sys.executable, "-m", "bench.noisy_tenant", "--modes", "limited,policed"]
    command += ["--rounds", "1", "--seconds", "1", "--flooders", "4", "--out", str(out)]
    # A low limit: 4 flooders spend its burst (100) and rate (50/s) even on a loaded machine
    # (policed: refused), and stay far under rate x max wait (limited: none refused).
    command += ["--limit", "50", "--victim-rate", "20"]
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the bench stops what it started
        stdout, stderr = proc.communicate(timeout=60)
        pytest.fail(f"noisy_tenant did not finish in 240 s:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    assert proc.returncode == 0, f"{stdout[-3000:]}\n{stderr[-3000:]}"
    assert "| noisy-tenant/limited/f4 |" in stdout
    assert "| noisy-tenant/policed/f4 |" in stdout
    report = json.loads(out.read_text())
    limited = report["limited"]
    assert len(limited["p99_ratios"]) == 1
    (round_,) = limited["rounds"]
    (policed,) = report["policed"]["rounds"]
    assert round_["flood"]["noisy_refused_per_s"] == 0  # waited for their tokens instead
    assert policed["flood"]["noisy_refused_per_s"] > 0
    for phase in ("idle", "flood"):
        assert round_[phase]["calls"] > 0, phase
        assert round_[phase]["victim_errors"] == 0, round_[phase]
        assert set(round_[phase]["cores"]) == {
            "server",
            "postgres",
            "victim",
            "flooder",
            "machine",
            "others",
        }
    assert round_["flood"]["noisy_ok_per_s"] > 0
    assert "noisy_other_errors" not in round_["flood"]
    assert len(report["load_average_start"]) == 3


def test_the_victim_must_stay_under_the_limit() -> None:
    command = [sys.executable, "-m", "bench.noisy_tenant", "--victim-rate", "300"]
    result = subprocess.run(
        [*command, "--limit", "200"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "--victim-rate must stay under --limit" in result.stderr
