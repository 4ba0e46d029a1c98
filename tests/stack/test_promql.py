"""The metric-name extractor and the Grafana variable substitution the stack tests rely on."""

from __future__ import annotations

import pytest

from tests.stack.promql import PromQLTokenError, UnknownVariableError, metric_names, substitute


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('sum by (job, le) (rate(foo_bucket{job=~"a|b", le!="+Inf"}[5m]))', {"foo_bucket"}),
        ("histogram_quantile(0.99, sum without (instance) (rate(a_bucket[1h:1m] offset 5m)))", {"a_bucket"}),
        ("a / on (job) group_left (version, commit) b", {"a", "b"}),
        ("a / ignoring (code) group_right b > bool 1e3", {"a", "b"}),
        ("sum(a) by (job) unless count without (x) (b) and c or d", {"a", "b", "c", "d"}),
        ('label_replace(a, "dst", "rate_total", "src", "(.*)")', {"a"}),
        ('count(ALERTS{alertstate="firing"}) or vector(0)', {"ALERTS"}),
        ("platform:requests:rate5m{transport='http'} * 0x1f - .5 + Inf + NaN", {"platform:requests:rate5m"}),
        ("topk(10, x @ start()) # trailing comment with words", {"x"}),
        ('max by (name) (s{state="open"} * 2 or s{state="half_open"})', {"s"}),
        ("absent_over_time(b[3m]) unless on () (up == 0)", {"b", "up"}),
    ],
)
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


@pytest.mark.parametrize("expr", ['{__name__="up"}', '{__name__=~"otelcol_.*"}', "count(__name__)"])
def test_name_matchers_are_refused(expr: str) -> None:
    with pytest.raises(PromQLTokenError, match="__name__"):
        metric_names(expr)


def test_untokenizable_input_is_an_error() -> None:
    with pytest.raises(PromQLTokenError):
        metric_names("rate(x[5m]) ; drop")


def test_substitute_forms_and_defaults() -> None:
    expr = 'x{job=~"$job", instance=~"${instance}", s="[[service]]", t="${job:regex}"}[$__rate_interval]'
    expected = (
        'x{job=~"platform/platform-api", instance=~".*", s="platform-api", t="platform/platform-api"}[1m]'
    )
    assert substitute(expr) == expected
    assert substitute("x[$__range]", {"__range": "6h"}) == "x[6h]"
    link = '{${__tags}} | trace_id="${__trace.traceId}"'
    assert substitute(link, {"__tags": 'a="b"'}) == '{a="b"} | trace_id="4bf92f3577b34da6a3ce929d0e0e4736"'


def test_substitute_refuses_unknown_variables() -> None:
    with pytest.raises(UnknownVariableError, match="nope"):
        substitute('rate(x{a=~"$nope"}[1m])')
