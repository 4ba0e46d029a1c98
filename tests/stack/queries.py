"""Every query the stack holds, in the language of the data source that runs it, variables made concrete.

    from tests.stack.queries import all_queries
    for q in all_queries():  # Query(language, text, where)
        ...

Where the queries are:
- grafana/dashboards/*.json: every panel target (Prometheus and Loki `expr`, Tempo `query`) and the
  selector of every query variable's label_values(<selector>, <label>);
- grafana/provisioning/datasources/datasources.yml: the queries Grafana runs when a link is followed
  (Tempo's tracesToLogsV2 and tracesToMetrics, Loki's derived fields, Prometheus's exemplar
  destinations), in the language of the data source the link opens;
- prometheus/rules/*.yml: every rule's `expr`.

Grafana's Tempo data source reads a query of hex digits only as a trace id to look up, not as TraceQL
(TempoDatasource.isTraceIdQuery): such a query's language is "traceid".

What this module cannot classify (a data source type, a Tempo query type, a variable query, an
annotation, a jsonData key of datasources.yml) raises UnknownQueryError: a new kind of query is taught
here before it can go unchecked.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple

import yaml

from tests.conftest import ROOT
from tests.stack.contract import RULES_DIR
from tests.stack.panel_queries import DASHBOARDS_DIR, iter_panels, load_dashboards
from tests.stack.promql import DEFAULT_VARIABLES, UnknownVariableError, substitute

DATASOURCES_FILE = ROOT / "grafana" / "provisioning" / "datasources" / "datasources.yml"

Language = Literal["promql", "logql", "traceql", "traceid"]
LANGUAGES: Mapping[str, Language] = {"prometheus": "promql", "loki": "logql", "tempo": "traceql"}
_HEX_ONLY = re.compile(r"\s*[0-9A-Fa-f]*\s*")  # Grafana's isTraceIdQuery, which also takes ""

# Span attributes a trace link's ${__tags} reads (tracesTo*.tags), with the value a span carries.
SPAN_ATTRIBUTES: Mapping[str, str] = {"service.name": DEFAULT_VARIABLES["service"]}
# Variables whose value is typed or listed in the dashboard, not queried.
VALUE_VARIABLE_TYPES = frozenset({"textbox", "custom", "constant", "interval", "datasource"})
_LABEL_VALUES = re.compile(r"label_values\(\s*(?:(?P<selector>.+),\s*)?(?P<label>[\w.]+)\s*\)")


class Query(NamedTuple):
    language: Language
    text: str  # as the data source receives it: Grafana variables substituted, $$ unescaped
    where: str  # file: panel and target, variable, data source setting, or rule


class UnknownQueryError(ValueError):
    """A query, or something that may hold one, of a kind this module does not know how to check."""


def make_query(
    datasource_type: str, raw: str, where: str, variables: Mapping[str, str] | None = None
) -> Query:
    """The query `raw` as a data source of `datasource_type` receives it."""
    language = _language(datasource_type, where)
    try:
        text = substitute(raw, variables)
    except UnknownVariableError as exc:
        exc.add_note(where)
        raise
    if language == "traceql" and _HEX_ONLY.fullmatch(text):
        language = "traceid"
    return Query(language, text, where)


def _language(datasource_type: str, where: str) -> Language:
    if datasource_type not in LANGUAGES:
        raise UnknownQueryError(f"{where}: no query language known for data source type {datasource_type!r}")
    return LANGUAGES[datasource_type]


def _text(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise UnknownQueryError(f"{where}: expected a query string in {key!r}, found {value!r}")
    return value


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


# ---- dashboards ------------------------------------------------------------------------------------------


def target_query(datasource_type: str, target: Mapping[str, Any], where: str) -> Query | None:
    """The query of one panel target; None for a Tempo service map, whose queries are Grafana's own."""
    if _language(datasource_type, where) != "traceql":
        return make_query(datasource_type, _text(target, "expr", where), where)
    query_type = target.get("queryType")
    if query_type == "traceql":
        return make_query(datasource_type, _text(target, "query", where), where)
    if query_type == "serviceMap" and not target.get("serviceMapQuery"):
        return None
    raise UnknownQueryError(f"{where}: Tempo query type {query_type!r} (or serviceMapQuery) is not checked")


def variable_query(variable: Mapping[str, Any], where: str) -> Query | None:
    """The selector of a label_values(<selector>, <label>) variable; None where the variable runs no query."""
    if variable.get("type") in VALUE_VARIABLE_TYPES:
        return None
    datasource_type = (variable.get("datasource") or {}).get("type")
    raw = variable.get("query")
    text = raw.get("query") if isinstance(raw, dict) else raw
    match = _LABEL_VALUES.fullmatch(text) if isinstance(text, str) else None
    if variable.get("type") != "query" or datasource_type not in ("prometheus", "loki") or match is None:
        raise UnknownQueryError(f"{where}: variable query {raw!r} ({datasource_type}) is not checked")
    selector = match.group("selector")
    return make_query(datasource_type, selector, where) if selector else None


def dashboard_queries(directory: Path = DASHBOARDS_DIR) -> list[Query]:
    found: list[Query | None] = []
    for path, dashboard in load_dashboards(directory).items():
        name = _relative(path)
        for panel in iter_panels(dashboard):
            for target in panel.get("targets", []):
                where = f"{name}: panel {panel.get('title', '')!r} target {target.get('refId', '?')}"
                datasource = target.get("datasource") or panel.get("datasource") or {}
                found.append(target_query(datasource.get("type", ""), target, where))
        for variable in dashboard.get("templating", {}).get("list", []):
            found.append(variable_query(variable, f"{name}: variable ${variable.get('name')}"))
        for annotation in dashboard.get("annotations", {}).get("list", []):
            if not annotation.get("builtIn"):
                raise UnknownQueryError(f"{name}: annotation {annotation.get('name')!r} is not checked")
    return [q for q in found if q is not None]


# ---- datasources.yml: the queries behind links -------------------------------------------------------

LinkQueries = Callable[[Any, Mapping[str, str], str], list[Query]]


def _unescape(node: Any) -> Any:
    """Grafana reads `$$` in a provisioning file as a literal `$` (a single `$` starts an env variable)."""
    if isinstance(node, str):
        return node.replace("$$", "$")
    if isinstance(node, list):
        return [_unescape(item) for item in node]
    if isinstance(node, dict):
        return {key: _unescape(value) for key, value in node.items()}
    return node


def _linked_query(types: Mapping[str, str], uid: str, raw: str, where: str, tags: str | None = None) -> Query:
    """`raw` as run by the data source `uid` that the link opens."""
    if uid not in types:
        raise UnknownQueryError(f"{where}: links to data source uid {uid!r}, which is not provisioned")
    return make_query(types[uid], raw, where, {"__tags": tags} if tags is not None else None)


def _tags(setting: Mapping[str, Any], where: str) -> str:
    """What Grafana makes of ${__tags}: one `label="value"` matcher per mapped span attribute."""
    matchers = []
    for tag in setting.get("tags", []):
        if tag["key"] not in SPAN_ATTRIBUTES:
            raise UnknownQueryError(f"{where}: no sample value for span attribute {tag['key']!r}")
        matchers.append(f'{tag.get("value") or tag["key"]}="{SPAN_ATTRIBUTES[tag["key"]]}"')
    return ", ".join(matchers)


def _traces_to_logs(setting: Any, types: Mapping[str, str], where: str) -> list[Query]:
    if not setting.get("customQuery"):
        return []  # Grafana builds the query from the tags and the trace and span ids
    tags = _tags(setting, where)
    return [_linked_query(types, setting["datasourceUid"], _text(setting, "query", where), where, tags)]


def _traces_to_metrics(setting: Any, types: Mapping[str, str], where: str) -> list[Query]:
    tags = _tags(setting, where)
    return [
        _linked_query(
            types, setting["datasourceUid"], _text(q, "query", where), f"{where} {q['name']!r}", tags
        )
        for q in setting.get("queries", [])
    ]


def _derived_fields(setting: Any, types: Mapping[str, str], where: str) -> list[Query]:
    # With a datasourceUid, `url` is the query run in that data source; without, an external URL.
    return [
        _linked_query(
            types, field["datasourceUid"], _text(field, "url", where), f"{where} {field['name']!r} url"
        )
        for field in setting
        if field.get("datasourceUid")
    ]


def _exemplar_destinations(setting: Any, types: Mapping[str, str], where: str) -> list[Query]:
    # Grafana's own query for an exemplar's internal link; a destination's `url` is an external URL.
    return [
        _linked_query(types, dest["datasourceUid"], "${__value.raw}", f"{where} {dest['name']!r}")
        for dest in setting
        if dest.get("datasourceUid")
    ]


# jsonData keys, by data source type: those whose value leads to queries, and those that hold none.
LINK_SETTINGS: Mapping[str, Mapping[str, LinkQueries]] = {
    "prometheus": {"exemplarTraceIdDestinations": _exemplar_destinations},
    "tempo": {"tracesToLogsV2": _traces_to_logs, "tracesToMetrics": _traces_to_metrics},
    "loki": {"derivedFields": _derived_fields},
}
PLAIN_SETTINGS: Mapping[str, frozenset[str]] = {
    "prometheus": frozenset(
        {
            "httpMethod",
            "prometheusType",
            "prometheusVersion",
            "timeInterval",
            "manageAlerts",
            "alertmanagerUid",
        }
    ),
    # serviceMap: Grafana's own queries of the traces_service_graph_* metrics.
    "tempo": frozenset({"serviceMap", "nodeGraph", "lokiSearch", "search", "traceQuery", "streamingEnabled"}),
    "loki": frozenset({"maxLines"}),
    "alertmanager": frozenset({"implementation", "handleGrafanaManagedAlerts"}),
}


def datasource_queries(path: Path = DATASOURCES_FILE) -> list[Query]:
    datasources: list[dict[str, Any]] = _unescape(yaml.safe_load(path.read_text()))["datasources"]
    types = {ds["uid"]: ds["type"] for ds in datasources}
    out: list[Query] = []
    for ds in datasources:
        links = LINK_SETTINGS.get(ds["type"], {})
        for key, value in ds.get("jsonData", {}).items():
            where = f"{_relative(path)}: {ds['name']} jsonData.{key}"
            if key in links:
                out.extend(links[key](value, types, where))
            elif key not in PLAIN_SETTINGS.get(ds["type"], frozenset()):
                raise UnknownQueryError(f"{where}: unknown setting; tell {__name__} if it holds queries")
    return out


# ---- prometheus/rules ------------------------------------------------------------------------------------


def rule_queries(directory: Path = RULES_DIR) -> list[Query]:
    out: list[Query] = []
    for path in sorted(directory.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                kind = "alert" if "alert" in rule else "record"
                where = f"{_relative(path)}: {kind} {rule.get(kind)}"
                out.append(Query("promql", _text(rule, "expr", where), where))
    return out


def all_queries() -> list[Query]:
    return dashboard_queries() + datasource_queries() + rule_queries()
