"""The Grafana dashboard (deploy/grafana/dashboards) and the alert rules ask only for
metrics a worker exports, in PromQL that Prometheus parses.

The metric names come from what a worker registers (``worker.metrics`` and the
collectors ``worker.ops.startup`` adds to ``/metrics``), with the sample suffixes
Prometheus sees (``_total``; ``_bucket``, ``_sum``, ``_count``). The syntax is checked by
``promtool check rules`` on every query written as a recording rule.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from prometheus_client.core import REGISTRY, Metric

import worker.metrics
from tests.alerting import alert_rules
from tests.tools import promtool
from worker.journal.attention import AttentionDepth
from worker.ops.gauges import RedisGauges

DASHBOARDS = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards"
#: Sample names each metric type puts on /metrics, after the family's name.
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
            "summary": ("", "_sum", "_count"), "info": ("_info",)}
#: PromQL words that are not metric names (functions are told by the "(" after them).
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
#: Grafana's variables, replaced by what Grafana would put there.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}


def no_redis() -> redis.Redis:
    raise AssertionError("naming the gauges must not read Redis")


def exported_names() -> set[str]:
    """Every sample name a worker's ``/metrics`` can show."""
    families: list[Metric] = [
        *REGISTRY.collect(),  # worker.metrics and the process / Python collectors
        *worker.metrics.DeadLetterDepth(lambda: 0).collect(),
        *AttentionDepth(lambda: 0).collect(),
        *RedisGauges(no_redis).describe(),
    ]
    return {family.name + suffix for family in families
            for suffix in SUFFIXES.get(family.type, ("",))}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads.

    Examples:
        >>> sorted(metric_names('sum by (provider) (rate(a_total{x="y"}[5m])) > on () b'))
        ['a_total', 'b']
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)  # label matchers, ranges
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ",
                  text)  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][\w:]*", text):
        if text[match.end():].lstrip().startswith("(") or match[0].lower() in KEYWORDS:
            continue  # a function or an operator
        names.add(match[0])
    return names


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))  # panels inside a row


def dashboard_queries() -> list[tuple[str, str]]:
    """(dashboard and panel title, PromQL) of every query of every dashboard."""
    queries = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in panels(dashboard["panels"]):
            for target in panel.get("targets", []):
                queries.append((f"{path.name}: {panel['title']}", target["expr"]))
    return queries


def with_grafana_variables(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def test_there_is_a_dashboard_with_the_panels_operators_look_for() -> None:
    """Given the dashboards, then outcomes, latency, retries, breaker, dead letters and
    backlog each have a panel."""
    titles = " | ".join(title.lower() for title, _ in dashboard_queries())
    for subject in ("outcomes", "latency", "retries", "breaker", "dead letters", "backlog"):
        assert subject in titles, subject


def test_every_dashboard_query_names_metrics_the_worker_exports() -> None:
    """Given every query of every dashboard, then each metric it names is one a worker
    exports (a renamed metric would leave a panel empty without a word)."""
    exported = exported_names()
    assert {"idvcancel_requests_total", "idvcancel_provider_latency_seconds_bucket",
            "idvcancel_backlog", "idvcancel_dead_letters"} <= exported
    unknown = {(title, name) for title, expr in dashboard_queries()
               for name in metric_names(expr) if name not in exported}
    assert not unknown, sorted(unknown)


def test_every_alert_names_metrics_the_worker_exports() -> None:
    exported = exported_names()
    unknown = {(name, metric) for name, rule in alert_rules().items()
               for metric in metric_names(rule["expr"]) if metric not in exported}
    assert not unknown, sorted(unknown)


def test_a_query_naming_a_metric_nobody_exports_is_caught() -> None:
    """Given a misspelt metric, then the check above would name it (it can fail)."""
    assert metric_names("sum(rate(idvcancel_request_total[5m]))") - exported_names() == {
        "idvcancel_request_total"}


def test_every_dashboard_query_is_promql_prometheus_parses(tmp_path: Path) -> None:
    """Given every query (Grafana's variables filled in) as a recording rule, when
    ``promtool check rules`` reads them, then it finds no error."""
    tool = promtool()
    rules = [{"record": f"dashboard:query_{n}", "expr": with_grafana_variables(expr)}
             for n, (_, expr) in enumerate(dashboard_queries())]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run([tool, "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("provisioning", ["datasources/prometheus.yml",
                                          "dashboards/idvcancel.yml"])
def test_grafana_provisioning_files_are_yaml_grafana_reads(provisioning: str) -> None:
    loaded = yaml.safe_load((DASHBOARDS.parent / "provisioning" / provisioning).read_text())
    assert loaded["apiVersion"] == 1
