"""Every LogQL, TraceQL and PromQL query of the stack parses with the grammar of Grafana's own query editor.

The queries (tests/stack/queries.py): dashboard targets and variables, the link queries of
datasources.yml, and prometheus/rules/. The grammars (tests/stack/grammars/): @grafana/lezer-logql,
@grafana/lezer-traceql and @prometheus-io/lezer-promql, which follows Prometheus 3 where promtool here is
2.42 (test_dashboards.py and test_rules.py keep the promtool checks).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.stack.contract import RULES_DIR
from tests.stack.lezer import GRAMMAR_LANGUAGES, GRAMMARS, ErrorRange, error_ranges, mark, pinned_versions
from tests.stack.panel_queries import DASHBOARDS_DIR
from tests.stack.queries import (
    DATASOURCES_FILE,
    Query,
    UnknownQueryError,
    all_queries,
    dashboard_queries,
    datasource_queries,
)

TRACE_ID = re.compile(r"[0-9a-fA-F]{32}|[0-9a-fA-F]{16}")


@pytest.fixture(scope="module")
def queries() -> list[Query]:
    return all_queries()


@pytest.fixture(scope="module")
def parsed(queries: list[Query]) -> list[tuple[Query, list[ErrorRange]]]:
    """Every query a grammar reads, with its error ranges: one node process for all of them."""
    to_parse = [q for q in queries if q.language in GRAMMAR_LANGUAGES]
    return list(zip(to_parse, error_ranges(to_parse), strict=True))


@pytest.mark.parametrize("language", GRAMMAR_LANGUAGES)
def test_every_query_parses(language: str, parsed: list[tuple[Query, list[ErrorRange]]]) -> None:
    mine = [(q, errors) for q, errors in parsed if q.language == language]
    assert mine, f"no {language} query found: is tests/stack/queries.py still reading every file?"
    bad = [f"{q.where}:\n    {mark(q.text, errors)}" for q, errors in mine if errors]
    package = GRAMMARS[language]
    assert not bad, (
        f"{len(bad)} of {len(mine)} {language} queries do not parse with {package} "
        f"{pinned_versions()[package]} (⚠ marks each error):\n" + "\n".join(bad)
    )


def test_trace_id_lookups_are_trace_ids(queries: list[Query]) -> None:
    # Tempo looks up a hex-only query as a trace id: it must be one, not TraceQL gone wrong.
    lookups = [q for q in queries if q.language == "traceid"]
    assert lookups
    for q in lookups:
        assert TRACE_ID.fullmatch(q.text.strip()), f"{q.where}: {q.text!r} is not a trace id"


def test_queries_come_from_every_file(queries: list[Query]) -> None:
    sources = {q.where.split(":", 1)[0] for q in queries}
    files = [*DASHBOARDS_DIR.glob("*.json"), DATASOURCES_FILE, *RULES_DIR.glob("*.yml")]
    assert sources == {str(path.relative_to(ROOT)) for path in files}
    # New provisioning (alerting rules, another data source file) may hold queries: read it here first.
    provisioning = DATASOURCES_FILE.parent.parent
    assert {p.relative_to(provisioning) for p in provisioning.rglob("*.y*ml")} == {
        Path("dashboards/dashboards.yml"),  # the dashboard provider: a path, no queries
        DATASOURCES_FILE.relative_to(provisioning),
    }


# ---- the check can fail ---------------------------------------------------------------------------------

# (query, whether it parses): one mistake per language and kind, and a valid query of each language.
CASES = [
    (Query("logql", 'sum(count_over_time({job="x"}))', "LogQL range function without a range"), False),
    (Query("logql", '{job="x"} |= "error', "LogQL unterminated string"), False),
    (Query("traceql", '{ resource.service.name = "x" && status = error', "TraceQL unclosed span set"), False),
    (Query("traceql", "{ span.http.status_code >= }", "TraceQL comparison without a value"), False),
    (Query("promql", "sum by (job) (rate(up[1m])", "PromQL unbalanced parentheses"), False),
    (Query("promql", '{job="x"} |= `error`', "LogQL given to the PromQL grammar"), False),
    (Query("logql", 'sum by (level) (count_over_time({job="x"} | json [5m]))', "LogQL"), True),
    (Query("traceql", '{ resource.service.name = "x" } | count() > 2', "TraceQL"), True),
    (Query("promql", "histogram_quantile(0.99, sum by (le) (rate(x_bucket[5m])))", "PromQL"), True),
]


def test_the_grammars_tell_broken_queries_from_valid_ones() -> None:
    ranges = error_ranges([q for q, _ in CASES])
    wrong = [
        f"{q.where}: {q.text}"
        for (q, parses), errors in zip(CASES, ranges, strict=True)
        if parses == bool(errors)
    ]
    assert not wrong, "misjudged:\n" + "\n".join(wrong)


def test_an_unknown_data_source_type_fails_the_extraction(tmp_path: Path) -> None:
    panel = {"title": "p", "targets": [{"refId": "A", "datasource": {"type": "elasticsearch"}, "query": "x"}]}
    (tmp_path / "d.json").write_text(json.dumps({"panels": [panel]}))
    with pytest.raises(UnknownQueryError, match="'elasticsearch'"):
        dashboard_queries(tmp_path)


def test_an_unknown_datasource_setting_fails_the_extraction(tmp_path: Path) -> None:
    profiles = {"datasourceUid": "pyroscope", "customQuery": True, "query": "process_cpu"}
    tempo = {"name": "Tempo", "uid": "tempo", "type": "tempo", "jsonData": {"tracesToProfiles": profiles}}
    path = tmp_path / "datasources.yml"
    path.write_text(json.dumps({"datasources": [tempo]}))
    with pytest.raises(UnknownQueryError, match="tracesToProfiles"):
        datasource_queries(path)


def test_the_promql_grammar_follows_the_prometheus_we_run() -> None:
    # @prometheus-io/lezer-promql 0.3MM.P is released with Prometheus 3.MM.P.
    grammar_minor = pinned_versions()["@prometheus-io/lezer-promql"].split(".")[1]
    image = re.search(r"^PROMETHEUS_IMAGE=\S+:v3\.(\d+)\.", (ROOT / ".env").read_text(), re.MULTILINE)
    assert image, "PROMETHEUS_IMAGE in .env is not a Prometheus 3 tag"
    assert grammar_minor == f"3{int(image.group(1)):02d}", "pin the lezer-promql release of that Prometheus"
