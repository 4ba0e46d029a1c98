"""/v1/jobs and /admin/jobs/replay through Flask's test client, over the real services (real redis)."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from app.domain.jobs import JobStatus
from app.settings import Settings
from tests.unit.http.conftest import bearer


def test_submit_then_read_the_status(client: FlaskClient, settings: Settings) -> None:
    r = client.post(
        "/v1/jobs",
        json={"kind": "primes", "params": {"limits": [10, 20]}},
        headers=bearer(settings, "read write"),
    )
    assert r.status_code == 202, r.get_json()
    job = r.get_json()
    assert r.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert (job["kind"], job["status"], job["attempts"], job["params"]) == (
        "primes",
        "queued",
        0,
        {"limits": [10, 20]},
    )
    got = client.get(f"/v1/jobs/{job['id']}", headers=bearer(settings, "read"))
    assert got.status_code == 200 and got.get_json()["status"] == str(JobStatus.QUEUED)


def test_an_idempotency_key_answers_the_first_job(client: FlaskClient, settings: Settings) -> None:
    body = {"kind": "primes", "params": {"limits": [10]}, "idempotency_key": "order-42"}
    first = client.post("/v1/jobs", json=body, headers=bearer(settings, "read write"))
    again = client.post(
        "/v1/jobs", json={**body, "params": {"limits": [99]}}, headers=bearer(settings, "read write")
    )
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.get_json()["id"] == first.get_json()["id"]
    assert again.get_json()["params"] == {"limits": [10]}


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"kind": "nope"}, 400, "kind"),
        ({"params": {}}, 400, "kind"),
        ({"kind": "primes", "params": {"limits": [1]}}, 400, "params.limits[0]"),
        ({"kind": "primes", "params": []}, 400, "params"),
        ({"kind": "primes", "params": {"limits": [10]}, "idempotency_key": 7}, 400, "idempotency_key"),
        ({"kind": "primes", "params": {"limits": [10]}, "idempotency_key": ""}, 400, "idempotency_key"),
        ({"kind": "import", "params": {"items": {"k": "x" * (1024 * 1024)}}}, 413, None),  # the body limit
    ],
)
def test_bad_submissions_are_refused_naming_the_field(
    client: FlaskClient, settings: Settings, body: dict[str, object], status: int, field: str | None
) -> None:
    r = client.post("/v1/jobs", json=body, headers=bearer(settings, "read write"))
    assert r.status_code == status, r.get_json()
    assert r.content_type.startswith("application/problem+json")
    assert r.get_json().get("field") == field


def test_unknown_jobs_are_404(client: FlaskClient, settings: Settings) -> None:
    for job_id in ("nope", "0" * 32, "A" * 32):
        r = client.get(f"/v1/jobs/{job_id}", headers=bearer(settings, "read"))
        assert r.status_code == 404 and r.get_json()["field"] == "id"


def test_scopes(client: FlaskClient, settings: Settings) -> None:
    body = {"kind": "primes", "params": {"limits": [10]}}
    assert client.post("/v1/jobs", json=body, headers=bearer(settings, "read")).status_code == 403
    assert (
        client.post("/admin/jobs/replay", json={}, headers=bearer(settings, "read write")).status_code == 403
    )
    r = client.post("/admin/jobs/replay", json={"limit": 5}, headers=bearer(settings, "admin"))
    assert r.status_code == 200 and r.get_json() == {"replayed": []}
    assert (
        client.post("/admin/jobs/replay", json={"limit": 0}, headers=bearer(settings, "admin")).status_code
        == 400
    )
