"""Alertmanager's config (amtool), its routing, and the alert-sink a person reads, as real processes.

The last test wires Debian's Alertmanager, running our config, to a real alert-sink process: an alert
posted to Alertmanager's API comes out as a line in the sink's log, which is what the user sees with
`docker compose logs -f alert-sink`.
"""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, free_port, wait_until
from tests.stack.compose_files import host_port, load_yaml, resolved_config

CONFIG = ROOT / "alertmanager" / "alertmanager.yml"
SINK = ROOT / "alertmanager" / "sink" / "alert_sink.py"
RECEIVER = "alert-sink"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (apt-get install prometheus-alertmanager); .ci/run installs it")
    return path


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("amtool"), *args], capture_output=True, text=True, timeout=30)


def rule_alerts() -> list[dict[str, str]]:
    """Label sets of every alert in prometheus/rules/ (empty until the rule files exist)."""
    alerts = []
    for file in sorted((ROOT / "prometheus" / "rules").glob("*.yml")):
        for group in (yaml.safe_load(file.read_text()) or {}).get("groups", []):
            for rule in group.get("rules", []):
                if "alert" in rule:
                    alerts.append({"alertname": rule["alert"], **rule.get("labels", {})})
    return alerts


def test_amtool_check_config_passes() -> None:
    proc = amtool("check-config", str(CONFIG))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


@pytest.mark.parametrize(
    "labels",
    [
        {"alertname": "Anything", "severity": "page"},
        {
            "alertname": "Anything",
            "severity": "ticket",
            "job": "platform/platform-api",
            "slo": "availability",
        },
        {"alertname": "NoSeverityAtAll"},
    ],
)
def test_every_alert_routes_to_the_sink(labels: dict[str, str]) -> None:
    matchers = [f"{k}={v}" for k, v in labels.items()]
    proc = amtool(
        "config", "routes", "test", f"--config.file={CONFIG}", f"--verify.receivers={RECEIVER}", *matchers
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == RECEIVER


def test_the_project_alert_rules_route_to_the_sink() -> None:
    alerts = rule_alerts()
    if not alerts:
        pytest.skip("prometheus/rules/ has no alerts yet")
    for labels in alerts:
        assert labels.get("severity"), f"{labels['alertname']} has no severity to group by"
        matchers = [f"{k}={v}" for k, v in labels.items()]
        proc = amtool("config", "routes", "test", f"--config.file={CONFIG}", *matchers)
        assert proc.stdout.strip() == RECEIVER, (labels, proc.stdout, proc.stderr)


def test_route_groups_by_alertname_and_severity_and_sends_to_the_sink_service(tmp_path: Path) -> None:
    config = load_yaml("alertmanager/alertmanager.yml")
    route = config["route"]
    assert route["receiver"] == RECEIVER
    assert route["group_by"] == ["alertname", "severity"]
    (receiver,) = [r for r in config["receivers"] if r["name"] == RECEIVER]
    (webhook,) = receiver["webhook_configs"]
    assert webhook["send_resolved"] is True
    services = resolved_config(tmp_path)["services"]
    host, port = host_port(webhook["url"])
    assert host == "alert-sink" and host in services
    assert port == int(services["alert-sink"]["environment"]["ALERT_SINK_PORT"])
    assert webhook["url"].endswith("/alerts")


# ---- the alert-sink, a real process


@dataclass
class Sink:
    proc: subprocess.Popen[str]
    port: int
    lines: list[str]

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()

    def log(self) -> str:
        return "\n".join(self.lines)


def start_sink() -> Sink:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(SINK)],
        env={"ALERT_SINK_BIND": "127.0.0.1", "ALERT_SINK_PORT": str(port), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    stdout = proc.stdout
    assert stdout is not None
    # Read on a thread so the pipe never fills; list.extend is atomic enough for readers polling it.
    threading.Thread(target=lambda: lines.extend(iter(stdout.readline, "")), daemon=True).start()
    sink = Sink(proc, port, lines)
    wait_until(lambda: sink.request("GET", "/healthz")[0] == 200, timeout=10, message="alert-sink to listen")
    return sink


@pytest.fixture
def sink() -> Iterator[Sink]:
    sink = start_sink()
    try:
        yield sink
    finally:
        if sink.proc.poll() is None:
            sink.proc.kill()
            sink.proc.wait(5)


def notification(status: str = "firing") -> dict[str, Any]:
    """An Alertmanager webhook payload (version 4), as documented for the pinned version."""
    return {
        "version": "4",
        "groupKey": '{}:{alertname="PlatformCircuitBreakerOpen"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": RECEIVER,
        "groupLabels": {"alertname": "PlatformCircuitBreakerOpen", "severity": "page"},
        "commonLabels": {"alertname": "PlatformCircuitBreakerOpen", "severity": "page"},
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": [
            {
                "status": status,
                "labels": {"alertname": "PlatformCircuitBreakerOpen", "severity": "page", "name": "quotes"},
                "annotations": {
                    "summary": "circuit breaker quotes is open",
                    "description": "line one\nFIRING Forged line",
                    "runbook_url": "https://example.invalid/runbooks.md#platformcircuitbreakeropen",
                    "dashboard": "http://127.0.0.1:3000/d/platform-deps",
                },
                "startsAt": "2026-11-22T03:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://127.0.0.1:9090/graph",
                "fingerprint": "abc123",
            }
        ],
    }


def test_sink_logs_each_alert_readably_and_keeps_recent_ones(sink: Sink) -> None:
    status, body = sink.request("POST", "/alerts", json.dumps(notification()).encode())
    assert (status, body) == (200, {"received": 1})
    line = wait_until(
        lambda: next((ln for ln in list(sink.lines) if "FIRING PlatformCircuitBreakerOpen" in ln), None),
        timeout=5,
        message="the alert in the sink's log",
    )
    assert 'severity="page"' in line and 'name="quotes"' in line
    assert 'summary="circuit breaker quotes is open"' in line
    assert "runbook_url=" in line and 'dashboard="http://127.0.0.1:3000/d/platform-deps"' in line
    # A newline inside an annotation stays inside its quoted value: no forged log lines.
    assert not any(ln.startswith("FIRING Forged") for ln in sink.lines)
    status, recent = sink.request("GET", "/alerts")
    assert status == 200
    assert [a["labels"]["alertname"] for a in recent["alerts"]] == ["PlatformCircuitBreakerOpen"]


def test_sink_rejects_what_alertmanager_would_never_send(sink: Sink) -> None:
    assert sink.request("POST", "/alerts", b"not json")[0] == 400
    status, body = sink.request("POST", "/alerts", b'{"alerts": "nope"}')
    assert status == 400 and "alerts" in body["error"]
    assert sink.request("POST", "/elsewhere", b"{}")[0] == 404
    assert sink.request("GET", "/nope")[0] == 404
    assert sink.request("GET", "/alerts")[1] == {"alerts": []}


def test_sink_stops_cleanly_on_sigterm(sink: Sink) -> None:
    sink.proc.send_signal(signal.SIGTERM)
    assert sink.proc.wait(10) == 0
    wait_until(lambda: "stopped" in sink.log(), timeout=5, message="the sink's stop line")


# ---- Alertmanager (Debian's binary) with our config, notifying the real sink


def test_an_alert_posted_to_alertmanager_reaches_the_sink_log(sink: Sink, tmp_path: Path) -> None:
    config = load_yaml("alertmanager/alertmanager.yml")
    # Same routing tree and receiver; only the sink's address and the first wait fit a test.
    config["receivers"][0]["webhook_configs"][0]["url"] = f"http://127.0.0.1:{sink.port}/alerts"
    config["route"]["group_wait"] = "0s"
    config_file = tmp_path / "alertmanager.yml"
    config_file.write_text(yaml.safe_dump(config))
    port = free_port()
    am = subprocess.Popen(
        [
            tool("prometheus-alertmanager"),
            f"--config.file={config_file}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def ready() -> bool:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            try:
                conn.request("GET", "/-/ready")
                return conn.getresponse().status == 200
            finally:
                conn.close()

        wait_until(ready, timeout=20, message="alertmanager to be ready")
        alert = [
            {
                "labels": {"alertname": "PlatformHighErrorRate", "severity": "page", "job": "platform/api"},
                "annotations": {"summary": "5% of requests fail"},
            }
        ]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request(
            "POST", "/api/v2/alerts", body=json.dumps(alert), headers={"Content-Type": "application/json"}
        )
        assert conn.getresponse().status == 200
        conn.close()
        line = wait_until(
            lambda: next((ln for ln in list(sink.lines) if "FIRING PlatformHighErrorRate" in ln), None),
            timeout=20,
            message=f"Alertmanager's notification in the sink log\n{sink.log()}",
        )
        assert 'severity="page"' in line and 'summary="5% of requests fail"' in line
        assert any(f'receiver="{RECEIVER}"' in ln for ln in sink.lines)

        # The inhibit rule: a fast-burn page silences the slow-burn ticket of the same SLO and job.
        burn = {"slo": "availability", "job": "platform/platform-api"}
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request(
            "POST",
            "/api/v2/alerts",
            body=json.dumps(
                [
                    {"labels": {"alertname": "BurnFast", "severity": "page", **burn}},
                    {"labels": {"alertname": "BurnSlow", "severity": "ticket", **burn}},
                ]
            ),
            headers={"Content-Type": "application/json"},
        )
        assert conn.getresponse().status == 200
        conn.close()

        def states() -> dict[str, str]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                conn.request("GET", "/api/v2/alerts")
                alerts = json.loads(conn.getresponse().read())
            finally:
                conn.close()
            return {a["labels"]["alertname"]: a["status"]["state"] for a in alerts}

        wait_until(
            lambda: states().get("BurnSlow") == "suppressed",
            timeout=10,
            message="the slow-burn ticket to be inhibited",
        )
        assert states()["BurnFast"] == "active"
    finally:
        am.terminate()
        am.wait(10)
