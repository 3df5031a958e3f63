"""docs/grafana/kontinual.json cannot drift from the code: every metric and label its PromQL names is one the
operator or the server pods register (read from kontinual.controller.metrics and kontinual.serving.metrics),
every Kontinual metric is charted, and per-model series are filtered by the $namespace and $model variables."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kontinual.controller.metrics import GATE_RESULTS, TRAINING_RESULTS, OperatorMetrics
from kontinual.serving.metrics import Counters

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs" / "grafana" / "kontinual.json"
# Labels Prometheus adds to every scraped series (the chart's monitors honor the series' own on a clash).
TARGET_LABELS = frozenset({"namespace", "pod", "instance", "job"})
FUNCTIONS = frozenset({"sum", "max", "min", "avg", "count", "rate", "irate", "increase", "histogram_quantile",
                       "clamp_min", "topk", "label_values"})
KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                      "offset"})
# The label that names the ContinualModel on each kind of series (namespace beside it).
MODEL_LABELS = {"name": "operator", "endpoint": "server"}

STRING = r'"(?:[^"\\]|\\.)*"'
SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)\s*\{((?:[^}\"]|" + STRING + r")*)\}")
MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*(" + STRING + ")")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")


def registered() -> dict[str, frozenset[str]]:
    """Every series name the operator and a server pod export -> its label names (Prometheus' `le` included)."""
    operator = OperatorMetrics()
    # Give each labelled metric a child through the public API, so its series and labels show.
    operator.reconciled("ns", "m", seconds=0.1, invalid=True, error=False)
    operator.events("ns", "m", [*TRAINING_RESULTS, *GATE_RESULTS, "TrainingStarted", "RolledBack"])
    operator.model_state("ns", "m", {"serving": {"version": 1}, "conditions": []})
    operator.polled("ns", "m", seconds=0.1, failed=True)
    series: dict[str, set[str]] = defaultdict(set)
    for registry in (operator.registry, Counters("m", "0").registry):
        for family in registry.collect():
            assert family.samples, f"{family.name} has no series here: exercise it in registered()"
            for sample in family.samples:
                series[sample.name].update(sample.labels)
    return {name: frozenset(labels) for name, labels in series.items()}


SERIES = registered()


def parse(expr: str) -> tuple[list[tuple[str, dict[str, str]]], set[str], list[str]]:
    """A PromQL expression -> (selectors: metric and {label: value} matchers, grouping labels, problems)."""
    selectors = [(m[1], {k: json.loads(v) for k, _, v in MATCHER.findall(m[2])}) for m in SELECTOR.finditer(expr)]
    problems = [f"{m[1]}{{{m[2]}}}: a matcher that is not label=\"value\""
                for m in SELECTOR.finditer(expr) if len(MATCHER.findall(m[2])) != m[2].count('"') // 2]
    rest = SELECTOR.sub(" ", expr)
    grouping = {label.strip() for m in GROUPING.finditer(rest) for label in m[1].split(",") if label.strip()}
    rest = re.sub(r"\[[^\]]*\]", " ", GROUPING.sub(" ", rest))  # ranges: [5m], [$__rate_interval]
    rest = re.sub(STRING, " ", rest)
    for m in re.finditer(r"[A-Za-z_:][\w:]*", rest):
        word, called = m[0], rest[m.end():].lstrip().startswith("(")
        if called and word not in FUNCTIONS:
            problems.append(f"{word}(): not a function this test knows (add it to FUNCTIONS if it is PromQL's)")
        elif not called and word not in KEYWORDS:
            selectors.append((word, {}))  # a bare metric name
    return selectors, grouping, problems


def check(expr: str, legend: str = "", *, variable: bool = False) -> list[str]:
    """What is wrong with one query: unknown metrics or labels, per-model series not filtered by the variables
    (but in the variables' own queries, which list the values to choose from)."""
    selectors, grouping, problems = parse(expr)
    allowed = set(TARGET_LABELS)
    for metric, matchers in selectors:
        if metric not in SERIES:
            problems.append(f"{metric}: neither the operator nor a server pod exports it")
            continue
        labels = SERIES[metric] | TARGET_LABELS
        allowed |= labels
        problems += [f"{metric}: has no label {label!r}" for label in matchers if label not in labels]
        for model_label in MODEL_LABELS:
            if not variable and model_label in SERIES[metric] and (matchers.get("namespace"), matchers.get(model_label)) != \
                    ("$namespace", "$model"):
                problems.append(f'{metric}: per-model series must select namespace=~"$namespace", '
                                f'{model_label}=~"$model"')
    problems += [f"grouped by {label!r}, which none of its series has" for label in grouping - allowed]
    problems += [f"legend names {label!r}, which none of its series has"
                 for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend) if label not in allowed]
    return problems


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for item in items:
        yield item
        yield from panels(item.get("panels") or [])


def queries() -> Iterator[tuple[str, str, str]]:
    """(where, PromQL, legend) of every panel target and every variable's label_values() query."""
    for panel in panels(dashboard()["panels"]):
        for target in panel.get("targets") or []:
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"], target.get("legendFormat", "")
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query)
            assert match, f"variable {variable['name']}: {query!r} is not label_values(SELECTOR, LABEL)"
            yield f"variable {variable['name']}", match[1], "{{" + match[2] + "}}"


@pytest.mark.parametrize("where, expr, legend", [pytest.param(*query, id=query[0]) for query in queries()])
def test_every_query_names_registered_metrics_and_labels(where: str, expr: str, legend: str) -> None:
    assert check(expr, legend, variable=where.startswith("variable")) == [], expr


def test_every_kontinual_metric_is_charted() -> None:
    """A metric added to the operator or the server pods fails here until the dashboard shows it."""
    charted = {metric for _, expr, _ in queries() for metric, _ in parse(expr)[0]}
    families = {re.sub(r"_(total|bucket|count|sum|created)$", "", name) for name in SERIES if name.startswith("kontinual_")}
    uncharted = {f for f in families if not any(re.sub(r"_(total|bucket|count|sum)$", "", c) == f for c in charted)}
    assert uncharted == set()
    assert len(families) >= 20  # 12 operator families, 12 server-pod ones: the registries were read


def test_it_is_templated_by_namespace_and_continual_model_on_a_chosen_prometheus() -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert {"namespace", "model"} <= variables.keys() and variables["model"]["label"] == "ContinualModel"
    assert "$namespace" in variables["model"]["query"]["query"]  # models of the chosen namespaces
    charts = [p for p in panels(board["panels"]) if p["type"] != "row"]
    assert len(charts) >= 12 and len({p["id"] for p in panels(board["panels"])}) == len(list(panels(board["panels"])))
    for panel in charts:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"]), panel["title"]
    cells = [(p["gridPos"]["y"] + dy, p["gridPos"]["x"] + dx) for p in panels(board["panels"])
             for dy in range(p["gridPos"]["h"]) for dx in range(p["gridPos"]["w"])]
    assert len(cells) == len(set(cells)), "panels overlap"
    assert all(p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in panels(board["panels"]))


@pytest.mark.parametrize("expr, legend, complaint", [
    ('rate(kontinual_server_request_total{namespace=~"$namespace", endpoint=~"$model"}[5m])', "",
     "kontinual_server_request_total: neither"),
    ('rate(kontinual_server_requests_total{namespace=~"$namespace", name=~"$model"}[5m])', "", "no label 'name'"),
    ('rate(kontinual_operator_promotions_total{namespace=~"$namespace"}[5m])', "", "per-model series must select"),
    ('sum by (version) (rate(kontinual_server_requests_total{namespace=~"$namespace", endpoint=~"$model"}[5m]))',
     "", "grouped by 'version'"),
    ("sum(kontinual_operator_reconciles)", "", "kontinual_operator_reconciles: neither"),  # the family, not a series
    ("kontinual_operator_reconciles_total", "{{model}}", "legend names 'model'"),
    ("histogram_quantil(0.5, kontinual_operator_reconcile_duration_seconds_bucket)", "", "histogram_quantil()"),
])
def test_the_check_catches_what_drifted(expr: str, legend: str, complaint: str) -> None:
    assert any(complaint in problem for problem in check(expr, legend)), check(expr, legend)
