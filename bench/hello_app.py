"""The framework's limit: a bare Flask hello endpoint, no telemetry and no I/O (bench/hello_gunicorn.py)."""

from __future__ import annotations

from flask import Flask, Response, jsonify

app = Flask("hello")


@app.get("/hello/<name>")
def hello(name: str) -> Response:
    return jsonify({"hello": name})
