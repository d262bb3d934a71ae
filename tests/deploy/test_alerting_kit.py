"""The alerting kit (deploy/prometheus, deploy/grafana) speaks the server's real metrics.

`make lint` runs `promtool check rules` and `promtool test rules` on the alert rules; here every
metric the rules and the dashboard name must be one a real server exposes, every dashboard query
must parse (promtool checks them as recording rules), and the dashboard must hold together.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from flowstate.testing import serve_in_process

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "flowstate.json"
PROMTOOL = ROOT / ".tools" / "bin" / "promtool"

_METRIC = re.compile(r"\bflowstate_[a-z_]+\b")
_SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def _alert_exprs() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _panels() -> list[dict[str, Any]]:
    return [p for p in _dashboard()["panels"] if p["type"] != "row"]


def _dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in _panels() for target in panel["targets"]]


def _families(exposition: str) -> set[str]:
    """Metric family names declared on a /metrics page, with their sample-name suffixes."""
    declared = re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.MULTILINE)
    names = set()
    for name, kind in declared:
        names.add(name)
        if kind == "counter":
            names.add(f"{name}_total")
        if kind == "histogram":
            names.update(f"{name}{suffix}" for suffix in ("_bucket", "_count", "_sum"))
    return names


async def test_every_metric_named_by_the_kit_is_exposed_by_the_server(database_url: str) -> None:
    async with serve_in_process(database_url, metrics_port=0) as running:
        port = running.server.metrics_port

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
                body: bytes = page.read()
                return body.decode()

        exposed = _families(await asyncio.to_thread(scrape))

    named = {m for expr in _alert_exprs() + _dashboard_exprs() for m in _METRIC.findall(expr)}
    assert named, "the kit names no flowstate metric"
    assert sorted(named - exposed) == []


def test_the_families_parser_reads_counters_and_histograms() -> None:
    page = "# TYPE flowstate_x counter\n# TYPE flowstate_h histogram\n# TYPE flowstate_g gauge\n"

    assert _families(page) == {
        "flowstate_x",
        "flowstate_x_total",
        "flowstate_h",
        "flowstate_h_bucket",
        "flowstate_h_count",
        "flowstate_h_sum",
        "flowstate_g",
    }


def _promtool() -> Path:
    if not PROMTOOL.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{PROMTOOL} is missing: `make setup` installs it")
        pytest.skip(f"{PROMTOOL} is missing: run `make setup`")
    return PROMTOOL


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    """Each query, with Grafana's variables filled in, is checked by promtool as a rule."""
    filled = [
        expr.replace("$__rate_interval", "5m").replace("$instance", ".*")
        for expr in _dashboard_exprs()
    ]
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"flowstate:dashboard_query_{i}", "expr": expr}
                    for i, expr in enumerate(filled)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(yaml.safe_dump(rules))

    checked = subprocess.run(
        [str(_promtool()), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(filled)} rules found" in checked.stdout


def test_promtool_refuses_a_broken_query(tmp_path: Path) -> None:
    """The check above can fail: a query with a syntax error is refused."""
    path = tmp_path / "broken.yaml"
    path.write_text(
        yaml.safe_dump(
            {"groups": [{"name": "g", "rules": [{"record": "x:y", "expr": "sum(rate(a[5m])"}]}]}
        )
    )

    checked = subprocess.run(
        [str(_promtool()), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert checked.returncode != 0


def test_the_dashboard_holds_together() -> None:
    dashboard = _dashboard()
    panels = dashboard["panels"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}

    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    for panel in _panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval"}
            assert used <= variables, (panel["title"], used - variables)
    assert dashboard["uid"] == "flowstate"
