"""/admin: fault injection shared by every worker (state lives in Redis), for seeing alerts fire."""

from __future__ import annotations

import dataclasses

from flask import Blueprint, Response, jsonify

from app.domain.auth import ADMIN
from app.http.api import services
from app.http.edge import requires
from app.http.inputs import json_body

bp = Blueprint("admin", __name__, url_prefix="/admin")


@bp.get("/chaos")
@requires(ADMIN)
def get_chaos() -> Response:
    return jsonify(dataclasses.asdict(services().chaos.get()))


@bp.post("/chaos")
@requires(ADMIN)
def set_chaos() -> Response:
    return jsonify(dataclasses.asdict(services().chaos.set(json_body())))
