"""Helpers for testing deploy/prometheus/alerts.yml with ``promtool test rules``, fed with
what a real worker's ``/metrics`` answered.

A scrape is one moment; ``promtool`` wants series over time. ``input_series`` turns a
list of scrapes, each held for some minutes, into promtool's ``input_series``: every
``idvcancel_*`` sample labelled as Prometheus would label it (``job``, ``instance``),
``_`` (no sample) before a series first appears, and each ``*_age_seconds`` gauge
growing by 60 every minute after its scrape, as a real age does while nothing happens.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
ALERTS_FILE = REPO / "deploy" / "prometheus" / "alerts.yml"
#: The labels Prometheus adds to every sample it scrapes from a worker (prometheus.yml).
TARGET_LABELS = {"job": "idvcancel-worker", "instance": "worker:9100"}
#: promtool's step between two values of a series, and between two rule evaluations.
STEP = "1m"


def samples(scrape: str) -> dict[str, float]:
    """``series selector → value`` for every ``idvcancel_*`` sample of a scrape (the
    ``*_created`` timestamps left out: no rule reads them)."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(scrape):
        for sample in family.samples:
            if not sample.name.startswith("idvcancel_") or sample.name.endswith("_created"):
                continue
            labels = {**sample.labels, **TARGET_LABELS}
            inner = ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(labels.items()))
            found[f"{sample.name}{{{inner}}}"] = sample.value
    return found


def _value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Inf" if value > 0 else "-Inf"
    return repr(value)


def input_series(phases: Sequence[tuple[Mapping[str, float], int]]) -> list[dict[str, str]]:
    """promtool ``input_series`` for ``phases``: each (samples of one scrape, minutes it
    is held); together they are one value per minute of every series seen."""
    names = sorted({series for scrape, _ in phases for series in scrape})
    out = []
    for series in names:
        values: list[str] = []
        ages = series.split("{", 1)[0].endswith("_age_seconds")
        for scrape, minutes in phases:
            for minute in range(minutes):
                if series not in scrape:
                    values.append("_")
                else:
                    values.append(_value(scrape[series] + (60.0 * minute if ages else 0.0)))
        out.append({"series": series, "values": " ".join(values)})
    return out


def alert_rules() -> dict[str, dict[str, Any]]:
    """Every alerting rule of alerts.yml by name."""
    loaded = yaml.safe_load(ALERTS_FILE.read_text())
    return {rule["alert"]: rule for group in loaded["groups"] for rule in group["rules"]
            if "alert" in rule}


def expected(alertname: str, **labels: str) -> dict[str, Any]:
    """What promtool must report for ``alertname`` firing with ``labels``: the rule's own
    labels too, and its annotations with ``{{ $labels.x }}`` filled in."""
    rule = alert_rules()[alertname]

    def render(text: str) -> str:
        return re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda m: labels[m[1]], text)

    return {"exp_labels": {**rule.get("labels", {}), **labels},
            "exp_annotations": {k: render(v) for k, v in rule.get("annotations", {}).items()}}


def promtool_test(promtool: str, directory: Path, series: list[dict[str, str]],
                  checks: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    """Write a promtool unit-test file for alerts.yml into ``directory`` and run
    ``promtool test rules`` on it."""
    document = {"rule_files": [str(ALERTS_FILE)], "evaluation_interval": STEP,
                "tests": [{"interval": STEP, "input_series": series,
                           "alert_rule_test": checks}]}
    path = directory / "alerts_test.yml"
    path.write_text(yaml.safe_dump(document, sort_keys=False, width=200))
    return subprocess.run([promtool, "test", "rules", str(path)], capture_output=True,
                          text=True, timeout=120, check=False)
