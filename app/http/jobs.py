"""/v1/jobs: submit a background job and read its status; /admin/jobs/replay: dead letters back to the queue.

A submit answers 202 with the job and its Location; the same idempotency key within a day answers 200 with
the job it first created (its params, not the new ones).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from app.domain.auth import ADMIN, READ, WRITE
from app.domain.errors import InvalidArgument
from app.domain.jobs import Job
from app.http.api import services
from app.http.edge import requires
from app.http.inputs import int_field, json_body, str_field

bp = Blueprint("jobs", __name__)
REPLAY_DEFAULT = 100


def job_json(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "kind": job.kind,
        "params": job.params,
        "status": str(job.status),
        "attempts": job.attempts,
        "submitted_at": job.submitted_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "result": job.result,
        "error": job.error,
    }


@bp.post("/v1/jobs")
@requires(WRITE)
def submit_job() -> Response:
    body = json_body()
    key = body.get("idempotency_key")
    if key is not None and not isinstance(key, str):
        raise InvalidArgument("'idempotency_key' must be a string", field="idempotency_key")
    params = body.get("params", {})
    job, created = services().jobs.submit(str_field(body, "kind"), params, idempotency_key=key)
    resp = jsonify(job_json(job))
    resp.status_code = 202 if created else 200
    resp.headers["Location"] = f"/v1/jobs/{job.id}"
    return resp


@bp.get("/v1/jobs/<job_id>")
@requires(READ)
def get_job(job_id: str) -> Response:
    return jsonify(job_json(services().jobs.get(job_id)))


@bp.post("/admin/jobs/replay")
@requires(ADMIN)
def replay_dead_jobs() -> Response:
    limit = int_field(json_body(), "limit", required=False)
    return jsonify({"replayed": services().jobs.replay_dead(REPLAY_DEFAULT if limit is None else limit)})
