"""Load for the stack: a steady, weighted mix of every HTTP and gRPC operation, plus fault scenarios.

Run by the `loadgen` compose service (headless; LOCUST_USERS, LOCUST_SPAWN_RATE, LOCUST_HOST from the
environment), or by hand against a local service:

    APP_ENV=dev LOCUST_HOST=http://127.0.0.1:8080 locust -f loadgen/locustfile.py --headless -u 10 -r 2

LOAD_SCENARIO picks what the chaos controller does while the mix runs (docs/stack.md, "Load and faults"):

    steady   no faults; reads the app's and the upstream's chaos state now and then
    errors   most of the app's Redis calls fail: item operations answer 5xx (error-budget burn alerts)
    slow     the app's gRPC event loop is blocked and the GIL held periodically, and the upstream answers
             slowly: event-loop lag and latency alerts
    breaker  the upstream fails every call: the circuit breaker opens (breaker alert), quotes go stale

The controller re-applies its fault before the fault's own TTL runs out; both chaos states are reset
when the run stops (test_stop); a killed run leaves faults that expire by themselves.

Tokens are minted in-process from the same keys the service uses (app.domain.auth, as
`python -m app token` does), one subject per simulated user so that the per-caller rate limit sees many
callers. Request names are the OpenAPI path templates and the gRPC full method names, so Locust's stats
line up with the service's `http.route` and `rpc.method` labels.

Over 400 lines because Locust loads one locustfile: the users, the fault controller and their helpers.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import time
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from functools import cache
from typing import TYPE_CHECKING, Any

import grpc
import grpc.experimental.gevent as grpc_gevent
from google.protobuf import struct_pb2
from locust import FastHttpUser, User, between, constant, events, task
from locust.env import Environment

# grpcio blocks the gevent hub unless told to cooperate; this must run before any channel exists.
grpc_gevent.init_gevent()

from app.rpc import client as rpc_client  # noqa: E402 - after init_gevent on purpose
from app.rpc.platform.v1 import platform_pb2 as pb  # noqa: E402
from app.rpc.platform.v1 import platform_pb2_grpc as pb_grpc  # noqa: E402

if TYPE_CHECKING:
    from app.domain.auth import Authenticator

SCENARIOS: dict[str, dict[str, dict[str, Any]]] = {
    # scenario: {"app": body for POST /admin/chaos, "upstream": body for POST upstream /chaos}
    "steady": {},
    "errors": {"app": {"redis_error_rate": 0.8, "job_failure_rate": 0.5}},
    "slow": {"app": {"loop_block_ms": 500, "gil_block_ms": 600}, "upstream": {"latency_ms": 900}},
    "breaker": {"upstream": {"error_rate": 1.0}},
}
SCENARIO = os.environ.get("LOAD_SCENARIO", "steady")
if SCENARIO not in SCENARIOS:
    raise SystemExit(f"LOAD_SCENARIO must be one of {', '.join(SCENARIOS)}; got {SCENARIO!r}")

GRPC_TARGET = os.environ.get("GRPC_TARGET", "127.0.0.1:50051")
UPSTREAM_URL = os.environ.get("UPSTREAM_URL", "http://127.0.0.1:8081").rstrip("/")
FAULT_TTL_S = 300  # each fault expires by itself this long after the last re-apply
REAPPLY_S = 60
TOKEN_TTL_S = 3600
SYMBOLS = ("ACME", "GLOBEX", "INITECH", "HOOLI", "UMBRELLA")
KEYS_PER_USER = 20  # bounds the item key space a run can create
JOBS_REMEMBERED = 20  # job ids a user keeps to read back
GRPC_SERVICE = "/platform.v1.PlatformService/"


@cache
def _authenticator() -> Authenticator:
    """The service's own token minting, built once per process from the same settings and keys."""
    from app.domain.auth import Authenticator
    from app.settings import load_settings

    return Authenticator(load_settings())


class Token:
    """A bearer token for one subject, re-minted well before it expires."""

    def __init__(self, subject: str, scopes: list[str]) -> None:
        self._subject = subject
        self._scopes = scopes
        self._value = ""
        self._renew_at = 0.0

    def header(self) -> str:
        now = time.monotonic()
        if now >= self._renew_at:
            self._value = _authenticator().mint(self._subject, self._scopes, TOKEN_TTL_S)
            self._renew_at = now + TOKEN_TTL_S * 0.8
        return f"Bearer {self._value}"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def subject(kind: str) -> str:
    return f"loadgen-{kind}-{uuid.uuid4().hex[:8]}"


class HttpApiUser(FastHttpUser):
    """Every /v1 operation and the probes, over HTTP/JSON."""

    weight = 3
    wait_time = between(0.2, 1.0)

    def on_start(self) -> None:
        self.token = Token(subject("http"), ["read", "write"])
        self.prefix = f"lg-http-{uuid.uuid4().hex[:8]}"
        self.stored: set[str] = set()
        self.jobs: list[str] = []
        self.scrypt_next = False
        # Every operation once up front, so that even a short run exercises the whole API.
        for operation in (
            self.healthz,
            self.readyz,
            self.openapi,
            self.metrics,
            self.put_item,
            self.get_item,
            self.delete_item,
            self.encrypt_decrypt,
            self.sign_verify,
            self.hash_password,
            self.count_primes,
            self.get_quote,
            self.submit_job,
            self.get_job,
        ):
            operation()

    def call(
        self,
        method: str,
        template: str,
        *,
        path_args: Mapping[str, str] | None = None,
        body: Any = None,
        auth: bool = True,
        expect: tuple[int, ...] = (200,),
        check: Callable[[Any], str | None] | None = None,
    ) -> Any:
        """One request named by its route template; a wrong status or a failed `check` is a failure."""
        path = template.format(**path_args) if path_args else template
        headers = {"Authorization": self.token.header()} if auth else {}
        with self.client.request(
            method, path, name=template, json=body, headers=headers, catch_response=True
        ) as resp:
            if resp.status_code not in expect:
                resp.failure(f"{resp.status_code}: {(resp.text or '')[:200]}")
                return None
            is_json = "json" in resp.headers.get("Content-Type", "")
            data = resp.json() if resp.status_code != 204 and is_json else None
            problem = check(data) if check else None
            if problem:
                resp.failure(problem)
                return None
            resp.success()
            return data

    def _key(self) -> str:
        return f"{self.prefix}-{random.randrange(KEYS_PER_USER)}"

    @task(10)
    def put_item(self) -> None:
        key = self._key()
        body = {"value": {"n": random.randrange(1_000_000), "at": time.time()}}
        if self.call("PUT", "/v1/items/{key}", path_args={"key": key}, body=body) is not None:
            self.stored.add(key)

    @task(20)
    def get_item(self) -> None:
        if not self.stored:
            self.put_item()
            return
        key = random.choice(sorted(self.stored))
        self.call(
            "GET",
            "/v1/items/{key}",
            path_args={"key": key},
            check=lambda d: None if d and d.get("key") == key else f"wrong item: {d}",
        )

    @task(2)
    def submit_job(self) -> None:
        """A background job (run by `python -m app jobs`): prime counts, or an import of a few keys."""
        if random.random() < 0.5:
            body: dict[str, Any] = {"kind": "primes", "params": {"limits": [random.randint(1_000, 50_000)]}}
        else:
            items = {f"{self.prefix}-job-{i}": {"n": i} for i in range(random.randint(1, 5))}
            body = {"kind": "import", "params": {"items": items}}
        job = self.call("POST", "/v1/jobs", body=body, expect=(202,))
        if job is not None:
            self.jobs.append(job["id"])
            del self.jobs[:-JOBS_REMEMBERED]

    @task(3)
    def get_job(self) -> None:
        if not self.jobs:
            self.submit_job()
            return
        job_id = random.choice(self.jobs)
        self.call(
            "GET",
            "/v1/jobs/{job_id}",
            path_args={"job_id": job_id},
            check=lambda d: None if d and d.get("id") == job_id else f"wrong job: {d}",
        )

    @task(4)
    def delete_item(self) -> None:
        if not self.stored:
            return
        key = random.choice(sorted(self.stored))
        self.stored.discard(key)
        self.call("DELETE", "/v1/items/{key}", path_args={"key": key}, expect=(204,))

    @task(15)
    def get_quote(self) -> None:
        self.call("GET", "/v1/quotes/{symbol}", path_args={"symbol": random.choice(SYMBOLS)})

    @task(6)
    def encrypt_decrypt(self) -> None:
        plaintext = os.urandom(random.randint(16, 512))
        sealed = self.call("POST", "/v1/crypto/encrypt", body={"plaintext": b64(plaintext)})
        if sealed:
            self.call(
                "POST",
                "/v1/crypto/decrypt",
                body=sealed,
                check=lambda d: None if d and d.get("plaintext") == b64(plaintext) else "round trip differs",
            )

    @task(5)
    def sign_verify(self) -> None:
        message = b64(os.urandom(64))
        signed = self.call("POST", "/v1/crypto/sign", body={"message": message})
        if signed:
            self.call(
                "POST",
                "/v1/crypto/verify",
                body={"message": message, "signature": signed["signature"]},
                check=lambda d: None if d and d.get("valid") is True else "signature did not verify",
            )

    @task(2)
    def hash_password(self) -> None:
        body: dict[str, Any] = {"password": b64(os.urandom(16))}
        self.scrypt_next = not self.scrypt_next  # alternate, so both algorithms run early
        if self.scrypt_next:
            body |= {"algorithm": "scrypt"}
        else:
            body |= {"algorithm": "pbkdf2", "params": {"iterations": 100_000}}
        self.call("POST", "/v1/compute/hash", body=body)

    @task(3)
    def count_primes(self) -> None:
        self.call("POST", "/v1/compute/primes", body={"limit": random.randint(50_000, 200_000)})

    @task(1)
    def healthz(self) -> None:
        self.call("GET", "/healthz", auth=False)

    @task(1)
    def readyz(self) -> None:
        self.call("GET", "/readyz", auth=False)

    @task(1)
    def openapi(self) -> None:
        self.call("GET", "/openapi.json", auth=False)

    @task(1)
    def metrics(self) -> None:
        self.call("GET", "/metrics", auth=False)


class GrpcApiUser(User):
    """Every PlatformService RPC, over gRPC with the generated stubs."""

    weight = 2
    wait_time = between(0.2, 1.0)

    def on_start(self) -> None:
        self.token = Token(subject("grpc"), ["read", "write"])
        self.prefix = f"lg-grpc-{uuid.uuid4().hex[:8]}"
        self.stored: set[str] = set()
        self.scrypt_next = False
        self.jobs: list[str] = []
        self.channel = rpc_client.channel(GRPC_TARGET)  # with the client contract (its retry policy)
        # The generated stub module has no annotations (app/rpc/client.py does the same).
        self.stub = pb_grpc.PlatformServiceStub(self.channel)
        for operation in (
            self.put_item,
            self.get_item,
            self.delete_item,
            self.encrypt_decrypt,
            self.sign_verify,
            self.hash_password,
            self.count_primes,
            self.get_quote,
            self.watch_quotes,
            self.submit_job,
            self.get_job,
            self.replay_dead_jobs,
        ):
            operation()

    def on_stop(self) -> None:
        self.channel.close()

    def call(
        self,
        method: str,
        request: Any,
        *,
        stream: bool = False,
        timeout: float = 10.0,
        token: Token | None = None,
    ) -> Any:
        """One RPC reported to Locust under its full method name (a server stream counts once, whole)."""
        metadata = (("authorization", (token or self.token).header()),)
        start = time.perf_counter()
        response: Any = None
        error: Exception | None = None
        length = 0
        try:
            rpc = getattr(self.stub, method)
            if stream:
                response = list(rpc(request, metadata=metadata, timeout=timeout))
                length = sum(m.ByteSize() for m in response)
            else:
                response = rpc(request, metadata=metadata, timeout=timeout)
                length = response.ByteSize()
        except grpc.RpcError as exc:
            error = exc
            response = None
        self.environment.events.request.fire(
            request_type="grpc",
            name=GRPC_SERVICE + method,
            response_time=(time.perf_counter() - start) * 1000,
            response_length=length,
            exception=error,
            context={},
        )
        return response

    def _key(self) -> str:
        return f"{self.prefix}-{random.randrange(KEYS_PER_USER)}"

    @task(10)
    def put_item(self) -> None:
        key = self._key()
        value = struct_pb2.Value()
        value.struct_value.update({"n": random.randrange(1_000_000), "at": time.time()})
        if self.call("PutItem", pb.PutItemRequest(key=key, value=value)) is not None:
            self.stored.add(key)

    @task(20)
    def get_item(self) -> None:
        if not self.stored:
            self.put_item()
            return
        self.call("GetItem", pb.GetItemRequest(key=random.choice(sorted(self.stored))))

    @task(4)
    def delete_item(self) -> None:
        if not self.stored:
            return
        key = random.choice(sorted(self.stored))
        self.stored.discard(key)
        self.call("DeleteItem", pb.DeleteItemRequest(key=key))

    @task(10)
    def get_quote(self) -> None:
        self.call("GetQuote", pb.GetQuoteRequest(symbol=random.choice(SYMBOLS)))

    @task(3)
    def watch_quotes(self) -> None:
        request = pb.WatchQuotesRequest(symbol=random.choice(SYMBOLS), count=3, interval_ms=200)
        self.call("WatchQuotes", request, stream=True)

    @task(6)
    def encrypt_decrypt(self) -> None:
        sealed = self.call("Encrypt", pb.EncryptRequest(plaintext=os.urandom(random.randint(16, 512))))
        if sealed is not None:
            self.call(
                "Decrypt",
                pb.DecryptRequest(key_id=sealed.key_id, nonce=sealed.nonce, ciphertext=sealed.ciphertext),
            )

    @task(5)
    def sign_verify(self) -> None:
        message = os.urandom(64)
        signed = self.call("Sign", pb.SignRequest(message=message))
        if signed is not None:
            self.call("Verify", pb.VerifyRequest(message=message, signature=signed.signature))

    @task(2)
    def hash_password(self) -> None:
        self.scrypt_next = not self.scrypt_next  # alternate, so both algorithms run early
        if self.scrypt_next:
            request = pb.HashRequest(algorithm="scrypt", password=os.urandom(16))
        else:
            request = pb.HashRequest(
                algorithm="pbkdf2", password=os.urandom(16), params={"iterations": 100_000}
            )
        self.call("Hash", request)

    @task(3)
    def count_primes(self) -> None:
        self.call("CountPrimes", pb.CountPrimesRequest(limit=random.randint(50_000, 200_000)))

    @task(2)
    def submit_job(self) -> None:
        params = struct_pb2.Struct()
        params.update({"limits": [random.randint(1_000, 50_000)]})
        job = self.call("SubmitJob", pb.SubmitJobRequest(kind="primes", params=params))
        if job is not None:
            self.jobs.append(job.id)
            del self.jobs[:-JOBS_REMEMBERED]

    @task(3)
    def get_job(self) -> None:
        if not self.jobs:
            self.submit_job()
            return
        self.call("GetJob", pb.GetJobRequest(id=random.choice(self.jobs)))

    def replay_dead_jobs(self) -> None:
        admin = Token(subject("grpc-admin"), ["admin"])
        self.call("ReplayDeadJobs", pb.ReplayDeadJobsRequest(limit=100), token=admin)


class ChaosController(FastHttpUser):
    """Exactly one per run: holds the scenario's faults on (or just watches in `steady`), resets at stop."""

    fixed_count = 1
    wait_time = constant(REAPPLY_S / 4)

    def on_start(self) -> None:
        self.token = Token(subject("chaos"), ["read", "write", "admin"])
        self.faults = SCENARIOS[SCENARIO]
        self.applied_at = float("-inf")
        self.hold_faults()
        self.watch()
        # Jobs the `errors` scenario's failures dead-lettered in an earlier run go back to the queue.
        self.chaos_request("jobs", "POST", {"limit": 100})

    def chaos_request(self, target: str, method: str, body: Any = None) -> bool:
        if target == "app":
            url, name = "/admin/chaos", "/admin/chaos"
        elif target == "jobs":
            url, name = "/admin/jobs/replay", "/admin/jobs/replay"
        else:
            url, name = f"{UPSTREAM_URL}/chaos", "upstream /chaos"
        headers = {"Authorization": self.token.header()}
        with self.client.request(
            method, url, name=name, json=body, headers=headers, catch_response=True
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"{resp.status_code}: {(resp.text or '')[:200]}")
                return False
            resp.success()
            return True

    def post_chaos(self, target: str, body: Mapping[str, Any]) -> bool:
        return self.chaos_request(target, "POST", dict(body))

    def hold_faults(self) -> None:
        for target, body in self.faults.items():
            self.post_chaos(target, {**body, "ttl_s": FAULT_TTL_S})
        self.applied_at = time.monotonic()

    @task
    def watch(self) -> None:
        if self.faults and time.monotonic() - self.applied_at >= REAPPLY_S:
            self.hold_faults()
        self.chaos_request("app", "GET")
        self.chaos_request("upstream", "GET")


@events.test_stop.add_listener  # type: ignore[untyped-decorator]  # locust's add_listener is unannotated
def reset_faults(environment: Environment, **_kwargs: Any) -> None:
    """Leave no fault behind: reset the app's and the upstream's chaos when the run stops."""
    if not SCENARIOS[SCENARIO] or not environment.host:
        return
    token = Token(subject("chaos-reset"), ["admin"])
    for url in (f"{environment.host.rstrip('/')}/admin/chaos", f"{UPSTREAM_URL}/chaos"):
        if not url.startswith(("http://", "https://")):
            continue
        request = urllib.request.Request(  # noqa: S310 - scheme checked just above
            url,
            data=json.dumps({"reset": True}).encode(),
            headers={"Authorization": token.header(), "Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:  # noqa: S310
                resp.read()
        except OSError as exc:  # the faults still expire by themselves
            logging.warning("could not reset chaos at %s: %s", url, exc)
