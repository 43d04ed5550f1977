"""In-process Vast.ai simulator: an aiohttp server speaking Vast's paths and JSON shapes.

Offer search with Vast's filter semantics, create, instances that move null → created →
loading → running on the injected clock (computed when read, no background tasks), per-second
billing, destroy, the paginated v1 list, container logs behind a ``result_url``, the current
user, Vast's auth quirks, and injectable faults (429 in its three body shapes, 5xx, hangs, a
create whose answer is lost). The real client is tested against it over loopback HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import fnmatch
import hashlib
import inspect
import itertools
import json
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from bot.clock import Clock
from bot.sim.catalog import default_catalogue, make_offer, storage_total_cost

log = logging.getLogger(__name__)

FaultKind = Literal[
    "429_text", "429_json", "429_destroy", "500", "502", "503", "504", "timeout", "drop_after_apply"
]
FAULT_KINDS: tuple[str, ...] = FaultKind.__args__  # type: ignore[attr-defined]

# Columns the v1 list can filter on; computed ones (dph_total, num_gpus) give 400 as on Vast.
LIST_FILTER_COLUMNS = frozenset(
    {"id", "label", "actual_status", "intended_status", "cur_state", "gpu_name", "verification",
     "machine_id", "host_id", "geolocation", "image_uuid"}
)
RUNTYPE_TOKENS = frozenset(
    {"ssh", "ssh_proxy", "ssh_direc", "ssh_direct", "jupyter", "jupyter_proxy", "jupyter_direc",
     "jupyter_direct", "args"}
)
# Vast's published per-endpoint thresholds (vast-api.md §1), for ``VastSim(rate_limits=...)``.
PUBLISHED_RATE_LIMITS: dict[str, float] = {
    "PUT /api/v0/asks/{id}/": 4.5,
    "GET /api/v1/instances/": 1.0,
    "GET /api/v0/instances/{id}/": 2.0,
    "DELETE /api/v0/instances/{id}/": 3.0,
    "POST /api/v0/bundles/": 6.0,  # "10 requests/minute/IP"
}
_OPERATORS = frozenset({"eq", "neq", "gt", "gte", "lt", "lte", "in", "notin"})
_QUERY_META = frozenset({"order", "limit", "type", "allocated_storage", "select_cols", "disable_bundling"})
_FIELD_ALIASES = {"dph": "dph_total", "cuda_vers": "cuda_max_good"}
_FIRST_INSTANCE_ID = 30_117_700

ContainerLogs = str | Callable[[], str | Awaitable[str]]
CreateHook = Callable[[dict[str, Any]], Awaitable[None] | None]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class SimRequest:
    """One request the simulator received: ``t`` is simulated (clock) time at arrival."""

    method: str
    path: str
    query: str
    url: str  # path and query string exactly as received
    t: float
    endpoint: str  # method + route template, e.g. "GET /api/v0/instances/{id}/"
    had_auth_header: bool
    status: int | None = None  # None when the connection was dropped or hung


_ENTRY = web.RequestKey("vastsim_entry", SimRequest)


@dataclass
class _Fault:
    method: str
    pattern: str
    kind: str
    remaining: int


@dataclass
class _Meta:
    created_at: float
    destroyed_at: float | None = None
    pins: list[tuple[float, str | None]] = field(default_factory=list)  # explicit status changes
    explicit: set[str] = field(default_factory=set)  # fields set by update_instance
    logs: ContainerLogs | None = None


@dataclass
class _LogRequest:
    instance_id: int
    tail: int
    ready_at: float
    daemon: bool


class VastSim:
    """A fake Vast.ai API on loopback. ``base = await sim.start()``, then point a ``VastClient`` at it."""

    def __init__(
        self,
        clock: Clock,
        *,
        catalogue: list[dict[str, Any]] | None = None,
        api_key: str | None = "sim-key",
        provisioning_delay: float = 2.0,
        created_to_loading: float = 5.0,
        loading_to_running: float = 60.0,
        destroy_delay: float = 0.0,
        logs_delay: float = 2.0,
        credit: float = 100.0,
        email: str = "operator@example.org",
        page_size: int = 25,
        rate_limits: dict[str, float] | None = None,
        hang_seconds: float = 60.0,
    ) -> None:
        self.clock = clock
        self.api_key = api_key
        self.offers: list[dict[str, Any]] = catalogue if catalogue is not None else default_catalogue()
        self.provisioning_delay = provisioning_delay
        self.created_to_loading = created_to_loading
        self.loading_to_running = loading_to_running
        self.destroy_delay = destroy_delay
        self.logs_delay = logs_delay
        self.initial_credit = credit
        self.email = email
        self.page_size = page_size
        # Endpoint template -> minimum seconds between calls; faster callers get a 429 like Vast's.
        self.rate_limits: dict[str, float] = dict(rate_limits or {})
        self.hang_seconds = hang_seconds
        self.instances: dict[int, dict[str, Any]] = {}  # live instances, as stored (no computed fields)
        self.destroyed: dict[int, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.requests: list[SimRequest] = []
        self.on_create: CreateHook | None = None
        self._meta: dict[int, _Meta] = {}
        self._faults: list[_Fault] = []
        self._log_requests: dict[str, _LogRequest] = {}
        self._last_call: dict[str, float] = {}
        self._next_id = _FIRST_INSTANCE_ID
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self.base_url: str | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0 = any free port) and return the base URL."""
        app = web.Application(middlewares=[self._record, self._faults_mw, self._rate_limit_mw, self._auth])
        app.router.add_post("/api/v0/bundles/", self._search)
        app.router.add_put("/api/v0/asks/{id}/", self._create)
        app.router.add_get("/api/v1/instances/", self._list)
        app.router.add_get("/api/v0/instances/{id}/", self._show)
        app.router.add_delete("/api/v0/instances/{id}/", self._destroy)
        app.router.add_put("/api/v0/instances/request_logs/{id}/", self._request_logs)
        app.router.add_get("/api/v0/users/current/", self._current_user)
        app.router.add_get("/sim/instance_logs/{token}", self._log_result)
        self._stopping.clear()
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        self.base_url = f"http://{bound_host}:{bound_port}"
        return self.base_url

    async def stop(self) -> None:
        self._stopping.set()  # releases hung handlers
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> VastSim:
        if self.base_url is None or self._runner is None:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ test and rehearsal hooks

    def inject_fault(self, method: str, path_pattern: str, kind: FaultKind, times: int = 1) -> None:
        """Answer the next ``times`` matching requests with ``kind`` instead of normally.

        ``method`` is an HTTP method or "*"; ``path_pattern`` is a glob on the request path
        (``/api/v0/asks/*``) or a route template (``/api/v0/asks/{id}/``). Kinds: 429 with
        Vast's three bodies and no Retry-After, 500/502/503/504, "timeout" (never answers),
        "drop_after_apply" (does the work, then drops the connection without answering).
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {', '.join(FAULT_KINDS)}")
        self._faults.append(_Fault(method.upper(), path_pattern, kind, times))

    def clear_faults(self) -> None:
        self._faults.clear()

    def update_instance(self, instance_id: int, **fields: Any) -> None:
        """Set fields of an instance (``ssh_host``, ``ssh_port``, ``public_ipaddr``, ``ports``, ...).

        ``actual_status=...`` pins the status from now on (billing follows it), overriding the
        clock-driven progression; explicit fields win over the computed ones.
        """
        row = self.instances.get(instance_id)
        if row is None:
            raise KeyError(f"no live instance {instance_id}")
        meta = self._meta[instance_id]
        now = self.clock.now()
        if "actual_status" in fields:
            meta.pins.append((now, fields.pop("actual_status")))
        for key, value in fields.items():
            row[key] = value
            meta.explicit.add(key)

    def set_container_logs(self, instance_id: int, logs: ContainerLogs) -> None:
        """What ``request_logs`` serves for the instance: text, or a callable returning (awaitable) text."""
        if instance_id not in self._meta:
            raise KeyError(f"no instance {instance_id}")
        self._meta[instance_id].logs = logs

    def seed_instance(self, *, label: str | None = None, age: float = 0.0, **fields: Any) -> int:
        """Create an instance directly (no HTTP, no offer consumed), ``age`` seconds old; returns its id."""
        offer = make_offer(29_000_000 + self._next_id % 100_000, "RTX 4090", 0.35, "Ontario, CA")
        offer["machine_id"] = 50_000 + self._next_id % 100_000
        instance_id = self._new_instance(
            offer, {"label": label, "image": "vastai/comfyui:@vastai-automatic-tag", "disk": 50},
            created_at=self.clock.now() - age,
        )
        row = self.instances[instance_id]
        for key, value in fields.items():
            if key == "actual_status":
                self._meta[instance_id].pins.append((self.clock.now(), value))
            else:
                row[key] = value
                self._meta[instance_id].explicit.add(key)
        return instance_id

    def status_of(self, instance_id: int, at: float | None = None) -> str | None:
        """``actual_status`` at clock time ``at`` (default now)."""
        meta = self._meta[instance_id]
        t = self.clock.now() if at is None else at
        status: str | None
        pinned = [s for (tp, s) in meta.pins if tp <= t]
        if pinned:
            status = pinned[-1]
        else:
            age = t - meta.created_at
            if age < self.provisioning_delay:
                status = None
            elif age < self.provisioning_delay + self.created_to_loading:
                status = "created"
            elif age < self.provisioning_delay + self.created_to_loading + self.loading_to_running:
                status = "loading"
            else:
                status = "running"
        return status

    def cost_of(self, instance_id: int, at: float | None = None) -> float:
        """Dollars billed so far: storage every second it exists, GPU (``dph_base``) every second running.

        While running that is ``dph_total`` per hour, prorated per second; destroy stops both.
        """
        meta = self._meta[instance_id]
        row = self.instances.get(instance_id) or self.destroyed[instance_id]
        end = self.clock.now() if at is None else at
        if meta.destroyed_at is not None:
            end = min(end, meta.destroyed_at)
        if end <= meta.created_at:
            return 0.0
        storage = float(row.get("storage_total_cost") or 0.0) * (end - meta.created_at) / 3600.0
        return storage + float(row.get("dph_base") or 0.0) * self.running_seconds(instance_id, end) / 3600.0

    def running_seconds(self, instance_id: int, until: float | None = None) -> float:
        """Seconds the instance has spent ``running`` (GPU-billed) up to ``until``."""
        meta = self._meta[instance_id]
        end = self.clock.now() if until is None else until
        if meta.destroyed_at is not None:
            end = min(end, meta.destroyed_at)
        start = meta.created_at
        loading_at = start + self.provisioning_delay + self.created_to_loading
        changes = [start + self.provisioning_delay, loading_at, loading_at + self.loading_to_running]
        changes += [tp for tp, _ in meta.pins]
        points = sorted({start, end, *(p for p in changes if start < p < end)})
        total = 0.0
        for a, b in itertools.pairwise(points):
            if self.status_of(instance_id, a) == "running":
                total += b - a
        return total

    def total_spent(self) -> float:
        return sum(self.cost_of(i) for i in self._meta)

    def row(self, instance_id: int) -> dict[str, Any] | None:
        """The instance as the API shows it now (computed fields included), or None when gone."""
        self._reap()
        if instance_id not in self.instances:
            return None
        return self._view(instance_id)

    def offer(self, offer_id: int) -> dict[str, Any] | None:
        return next((o for o in self.offers if o.get("id") == offer_id), None)

    def requests_to(self, endpoint: str) -> list[SimRequest]:
        return [r for r in self.requests if r.endpoint == endpoint]

    # ------------------------------------------------------------------ middlewares

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.resource
        template = route.canonical if route is not None else request.path
        entry = SimRequest(
            method=request.method,
            path=request.path,
            query=request.query_string,
            url=str(request.rel_url),
            t=self.clock.now(),
            endpoint=f"{request.method} {template}",
            had_auth_header="Authorization" in request.headers,
        )
        self.calls.append((request.method, request.path))
        self.requests.append(entry)
        request[_ENTRY] = entry
        response = await handler(request)
        entry.status = response.status
        return response

    @web.middleware
    async def _faults_mw(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        fault = self._take_fault(request)
        if fault is None:
            return await handler(request)
        kind = fault.kind
        log.debug("sim fault %s on %s %s", kind, request.method, request.path)
        if kind == "429_text":
            return web.Response(status=429, text="API requests too frequent endpoint threshold=1.0")
        if kind == "429_json":
            return web.json_response({"detail": "API requests too frequent endpoint threshold=1.0"}, status=429)
        if kind == "429_destroy":
            body = {"success": False, "error": "rate_limit_exceeded", "msg": "API requests too frequent"}
            return web.json_response(body, status=429)
        if kind == "500":
            return web.json_response({"success": False, "error": "server_error", "msg": "Internal error"}, status=500)
        if kind in ("502", "503", "504"):
            reason = {"502": "Bad Gateway", "503": "Service Unavailable", "504": "Gateway Time-out"}[kind]
            return web.Response(status=int(kind), text=f"<html><body><h1>{kind} {reason}</h1></body></html>",
                                content_type="text/html")
        if kind == "timeout":
            await self._hang()
            raise _dropped(request)
        # drop_after_apply: the work happens, the answer never arrives.
        await handler(request)
        raise _dropped(request)

    @web.middleware
    async def _rate_limit_mw(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        entry: SimRequest = request[_ENTRY]
        threshold = self.rate_limits.get(entry.endpoint)
        if threshold:
            last = self._last_call.get(entry.endpoint)
            if last is not None and entry.t - last < threshold:
                return web.Response(status=429, text=f"API requests too frequent endpoint threshold={threshold}")
            self._last_call[entry.endpoint] = entry.t
        return await handler(request)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.api_key is None or not request.path.startswith("/api/"):
            return await handler(request)
        token: str | None = None
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("bearer "):
            token = header[7:].strip()
        elif "api_key" in request.query:  # legacy form, still accepted by Vast
            token = request.query["api_key"]
        if not token:
            if request.path == "/api/v0/bundles/":
                return await handler(request)  # offer search works anonymously
            body = {"success": False, "error": "auth_error", "msg": "This action requires login."}
            return web.json_response(body, status=403)
        if token != self.api_key:
            # Vast's quirk: a wrong key is a 404, not a 401.
            body = {"success": False, "error": "auth_error", "msg": "Invalid user key"}
            return web.json_response(body, status=404)
        return await handler(request)

    # ------------------------------------------------------------------ handlers

    async def _search(self, request: web.Request) -> web.Response:
        query = await _json_body(request)
        if not isinstance(query, dict):
            return _error(400, "invalid_args", "query must be a JSON object")
        try:
            allocated = float(query.get("allocated_storage", 5.0))
            offers = [self._priced(o, allocated) for o in self.offers]
            for key, condition in query.items():
                if key in _QUERY_META:
                    continue
                if not isinstance(condition, dict):
                    condition = {"eq": condition}
                bad = set(condition) - _OPERATORS
                if bad:
                    return _error(400, "invalid_args", f"unknown operator(s) {sorted(bad)} on {key}")
                offers = [o for o in offers if _matches(_offer_field(o, key), condition)]
            offers = _ordered(offers, query.get("order") or [["score", "desc"]])
            limit = int(query.get("limit") or 64)
        except (TypeError, ValueError) as exc:
            return _error(400, "invalid_args", f"bad query: {exc}")
        return web.json_response({"offers": offers[: max(limit, 0)]})

    async def _create(self, request: web.Request) -> web.Response:
        offer_id = _int(request.match_info["id"])
        body = await _json_body(request)
        if not isinstance(body, dict):
            return _error(400, "invalid_args", "body must be a JSON object")
        offer = self.offer(offer_id) if offer_id is not None else None
        if offer is None or offer.get("rented") or not offer.get("rentable", True):
            msg = f"error 404/3603: no_such_ask Instance type by id {offer_id} is not available."
            return web.json_response({"success": False, "error": "invalid_args", "msg": msg, "ask_id": offer_id},
                                     status=404)
        label = body.get("label")
        if label is not None and (not isinstance(label, str) or len(label) > 256):
            return _error(400, "label_too_long", "label must be a string of at most 256 characters")
        env = body.get("env")
        if env is not None and not isinstance(env, dict):
            return _error(400, "invalid_args", "env must be a JSON object of NAME: value")
        if any(len(str(k)) + len(str(v)) > 256 for k, v in (env or {}).items()):
            return _error(400, "invalid_args", "an env entry is longer than 256 characters")
        if not body.get("image") and not body.get("template_hash_id"):
            return _error(400, "invalid_args", "image is required")
        disk = _float(body.get("disk", 10))
        if disk is None or disk < 8:
            return _error(400, "invalid_args", "disk must be at least 8 GB")
        runtype = body.get("runtype") or "ssh"
        if not isinstance(runtype, str) or not set(runtype.split()) <= RUNTYPE_TOKENS:
            return _error(400, "invalid_args", f"invalid runtype {runtype!r}")
        if len(str(body.get("onstart") or "")) + len(str(body.get("args_str") or "")) > 4096:
            return _error(400, "invalid_args", "onstart and args are longer than 4096 characters")
        instance_id = self._new_instance(offer, body, created_at=self.clock.now())
        offer["rented"] = True
        if self.on_create is not None:
            try:
                outcome = self.on_create(self.instances[instance_id])
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                log.exception("sim on_create hook failed for instance %s", instance_id)
        secret = hashlib.sha256(f"instance-{instance_id}".encode()).hexdigest()[:32]
        return web.json_response({"success": True, "new_contract": instance_id, "instance_api_key": secret})

    async def _list(self, request: web.Request) -> web.Response:
        self._reap()
        q = request.query
        try:
            filters = json.loads(q["select_filters"]) if q.get("select_filters") else {}
            order = json.loads(q["order_by"]) if q.get("order_by") else [{"col": "id", "dir": "asc"}]
            limit = int(q.get("limit", self.page_size))
        except (ValueError, TypeError):
            return _error(400, "invalid_args", "select_filters, order_by and limit must be valid JSON")
        if not isinstance(filters, dict) or not isinstance(order, list):
            return _error(400, "invalid_args", "select_filters must be an object and order_by a list")
        limit = 5 if limit <= 0 else min(limit, self.page_size)
        everything = [self._view(i) for i in sorted(self.instances)]
        rows = everything
        for column, condition in filters.items():
            if column not in LIST_FILTER_COLUMNS:
                return _error(400, "invalid_args", f"cannot filter on computed column {column}")
            if not isinstance(condition, dict) or set(condition) - _OPERATORS:
                return _error(400, "invalid_args", f"bad condition on {column}")
            rows = [r for r in rows if _matches(r.get(column), condition)]
        rows = _ordered(rows, [[o.get("col"), o.get("dir", "asc")] for o in order if isinstance(o, dict)])
        offset = 0
        if q.get("after_token"):
            offset = _decode_token(q["after_token"])
            if offset is None:
                return _error(400, "invalid_token", "invalid pagination token")
        page = rows[offset : offset + limit]
        next_token = _encode_token(offset + limit) if offset + limit < len(rows) else None
        label_counts: dict[str, int] = {}
        for r in everything:
            label_counts[r.get("label") or ""] = label_counts.get(r.get("label") or "", 0) + 1
        return web.json_response({
            "success": True,
            "instances_found": len(rows),
            "total_instances": len(everything),
            "next_token": next_token,
            "label_counts": label_counts,
            "instances": page,
        })

    async def _show(self, request: web.Request) -> web.Response:
        instance_id = _int(request.match_info["id"])
        row = self.row(instance_id) if instance_id is not None else None
        return web.json_response({"instances": row})

    async def _destroy(self, request: web.Request) -> web.Response:
        self._reap()
        instance_id = _int(request.match_info["id"])
        if instance_id is None or instance_id not in self.instances:
            return _error(404, "no_such_instance", f"Instance {request.match_info['id']} not found.")
        meta = self._meta[instance_id]
        if meta.destroyed_at is None:
            meta.destroyed_at = self.clock.now()  # billing stops here
        self._reap()
        return web.json_response({"success": True, "msg": f"destroying instance {instance_id}."})

    async def _request_logs(self, request: web.Request) -> web.Response:
        self._reap()
        instance_id = _int(request.match_info["id"])
        if instance_id is None or instance_id not in self.instances:
            return _error(404, "invalid_id", f"Instance {request.match_info['id']} not found.")
        body = await _json_body(request)
        body = body if isinstance(body, dict) else {}
        tail = _int(body.get("tail")) or 1000
        token = hashlib.sha256(f"{instance_id}:{len(self._log_requests)}:{self.clock.now()}".encode()).hexdigest()
        self._log_requests[token] = _LogRequest(
            instance_id, tail, self.clock.now() + self.logs_delay, str(body.get("daemon_logs")) == "true"
        )
        return web.json_response({
            "success": True,
            "result_url": f"{self.base_url}/sim/instance_logs/{token}.log",
            "msg": "Log request sent to host; fetch result_url when ready.",
        })

    async def _log_result(self, request: web.Request) -> web.Response:
        token = request.match_info["token"].removesuffix(".log")
        job = self._log_requests.get(token)
        # Like S3: a missing object is 404 NoSuchKey, one not uploaded yet 403 AccessDenied.
        if job is None:
            return web.Response(status=404, text=_s3_error("NoSuchKey"), content_type="application/xml")
        if self.clock.now() < job.ready_at:
            return web.Response(status=403, text=_s3_error("AccessDenied"), content_type="application/xml")
        text = await self._logs_text(job)
        lines = text.splitlines()
        return web.Response(text="\n".join(lines[-job.tail :]) + ("\n" if lines else ""))

    async def _current_user(self, request: web.Request) -> web.Response:
        credit = round(self.initial_credit - self.total_spent(), 6)
        return web.json_response({
            "id": 424242, "username": self.email.split("@")[0], "email": self.email,
            "credit": credit, "balance": 0.0, "balance_threshold": 0.0,
            "balance_threshold_enabled": False, "can_pay": True, "has_billing": True,
            "billing_creditonly": False, "ssh_key": None, "key_id": 1,
        })

    # ------------------------------------------------------------------ internals

    def _take_fault(self, request: web.Request) -> _Fault | None:
        route = request.match_info.route.resource
        template = route.canonical if route is not None else request.path
        for fault in self._faults:
            if fault.remaining <= 0 or fault.method not in ("*", request.method):
                continue
            if fault.pattern == template or fnmatch.fnmatchcase(request.path, fault.pattern):
                fault.remaining -= 1
                return fault
        return None

    async def _hang(self) -> None:
        # Real time on purpose: the client's socket timeout is what this exercises.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), self.hang_seconds)

    def _new_instance(self, offer: dict[str, Any], body: dict[str, Any], *, created_at: float) -> int:
        instance_id = self._next_id
        self._next_id += 1
        disk = _float(body.get("disk")) or 10.0
        disk_hour = storage_total_cost(float(offer.get("storage_cost") or 0.15), disk)
        dph_base = float(offer.get("dph_base") or 0.0)
        env = body.get("env") or {}
        ssh_idx = instance_id % 9 + 1
        row: dict[str, Any] = {
            "id": instance_id,
            "machine_id": offer.get("machine_id"),
            "host_id": offer.get("host_id"),
            "bundle_id": offer.get("bundle_id"),
            "ask_id": offer.get("id"),
            "label": body.get("label"),
            "image_uuid": body.get("image"),
            "image_runtype": body.get("runtype") or "ssh",
            "image_args": body.get("args") or [],
            "extra_env": [[str(k), str(v)] for k, v in env.items()],
            "onstart": body.get("onstart"),
            "jupyter_token": hashlib.sha256(f"jupyter-{instance_id}".encode()).hexdigest()[:10],
            "ssh_host": f"ssh{ssh_idx}.sim.invalid",
            "ssh_port": 20_000 + instance_id % 10_000,
            "ssh_idx": str(ssh_idx),
            "public_ipaddr": offer.get("public_ipaddr"),
            "local_ipaddrs": "10.0.3.12 172.17.0.1 \n",
            "gpu_name": offer.get("gpu_name"),
            "num_gpus": offer.get("num_gpus"),
            "gpu_ram": offer.get("gpu_ram"),
            "gpu_totalram": offer.get("gpu_total_ram"),
            "cpu_cores_effective": offer.get("cpu_cores_effective"),
            "cpu_ram": offer.get("cpu_ram"),
            "disk_space": disk,
            "inet_up": offer.get("inet_up"),
            "inet_down": offer.get("inet_down"),
            "dph_base": dph_base,
            "storage_cost": offer.get("storage_cost"),
            "storage_total_cost": round(disk_hour, 7),
            "dph_total": round(dph_base + disk_hour, 7),
            "inet_up_cost": offer.get("inet_up_cost"),
            "inet_down_cost": offer.get("inet_down_cost"),
            "is_bid": body.get("price") is not None,
            "min_bid": offer.get("min_bid"),
            "search": {
                "gpuCostPerHour": dph_base,
                "diskHour": round(disk_hour, 7),
                "totalHour": round(dph_base + disk_hour, 7),
            },
            "start_date": created_at,
            "end_date": offer.get("end_date"),
            "geolocation": offer.get("geolocation"),
            "verification": offer.get("verification"),
            "reliability2": offer.get("reliability2", offer.get("reliability")),
            "cuda_max_good": offer.get("cuda_max_good"),
            "template_id": None,
            "template_hash_id": body.get("template_hash_id"),
            "volume_info": [],
        }
        self.instances[instance_id] = row
        self._meta[instance_id] = _Meta(created_at=created_at)
        return instance_id

    def _view(self, instance_id: int) -> dict[str, Any]:
        row = dict(self.instances[instance_id])
        meta = self._meta[instance_id]
        now = self.clock.now()
        status = self.status_of(instance_id)
        running = status == "running"
        image = row.get("image_uuid") or "image"
        messages = {
            None: None,
            "created": "Creating container",
            "loading": f"Pulling image {image}",
            "running": f"success, running {image}",
        }
        computed: dict[str, Any] = {
            "actual_status": status,
            "intended_status": "stopped" if meta.destroyed_at is not None else "running",
            "cur_state": "running",
            "next_state": "running",
            "status_msg": messages.get(status, status),
            "uptime_mins": round(self.running_seconds(instance_id) / 60.0, 2) if running else None,
            "duration": (row["end_date"] - now) if isinstance(row.get("end_date"), int | float) else None,
            "gpu_util": 0.0 if running else None,
            "instance": {
                "gpuCostPerHour": row["dph_base"] if running else 0,
                "diskHour": row["storage_total_cost"],
                "totalHour": (row["dph_total"] if running else row["storage_total_cost"]),
            },
            "ports": self._auto_ports(row) if running else None,
            "direct_port_start": -1,
            "direct_port_end": -1,
        }
        if running:
            first = 40_000 + (instance_id % 500) * 20
            computed["direct_port_start"] = first
            computed["direct_port_end"] = first + 19
        for key, value in computed.items():
            if key not in meta.explicit:
                row[key] = value
        row["actual_status"] = status  # always the pinned or clock-driven value
        return row

    @staticmethod
    def _auto_ports(row: dict[str, Any]) -> dict[str, list[dict[str, str]]]:
        first = 40_000 + (int(row["id"]) % 500) * 20
        container_ports = [22]
        for name, _ in row.get("extra_env") or []:
            if name.startswith("-p "):
                inner = name[3:].split(":")[-1].split("/")[0]
                if inner.isdigit() and int(inner) not in container_ports:
                    container_ports.append(int(inner))
        return {f"{p}/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(first + i)}]
                for i, p in enumerate(container_ports[:20])}

    def _reap(self) -> None:
        now = self.clock.now()
        for instance_id in list(self.instances):
            destroyed_at = self._meta[instance_id].destroyed_at
            if destroyed_at is not None and now >= destroyed_at + self.destroy_delay:
                row = self.instances.pop(instance_id)
                self.destroyed[instance_id] = row
                offer = self.offer(row.get("ask_id"))  # type: ignore[arg-type]
                if offer is not None:
                    offer["rented"] = False  # the machine is offered again

    def _priced(self, offer: dict[str, Any], allocated_gb: float) -> dict[str, Any]:
        row = dict(offer)
        disk_hour = storage_total_cost(float(row.get("storage_cost") or 0.0), allocated_gb)
        base = float(row.get("dph_base") or 0.0)
        row["storage_total_cost"] = round(disk_hour, 7)
        row["dph_total"] = round(base + disk_hour, 7)
        row["search"] = {"gpuCostPerHour": base, "diskHour": round(disk_hour, 7), "totalHour": row["dph_total"]}
        return row

    async def _logs_text(self, job: _LogRequest) -> str:
        meta = self._meta.get(job.instance_id)
        if job.daemon:
            return f"vast daemon: instance {job.instance_id} container managed by sim\n"
        source = meta.logs if meta is not None else None
        if source is None:
            return self._default_logs(job.instance_id)
        if callable(source):
            produced = source()
            if inspect.isawaitable(produced):
                produced = await produced
            return str(produced)
        return source

    def _default_logs(self, instance_id: int) -> str:
        row = self.instances.get(instance_id) or self.destroyed.get(instance_id) or {}
        status = self.status_of(instance_id)
        lines = [f"vast sim: provisioning contract {instance_id} on machine {row.get('machine_id')}"]
        if status in ("loading", "running"):
            lines.append(f"Pulling image {row.get('image_uuid')}")
        if status == "running":
            lines += ["Status: Downloaded newer image", "Starting container", f"onstart: {row.get('onstart')}"]
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- helpers


class _ConnectionDropped(Exception):
    pass


def _dropped(request: web.Request) -> BaseException:
    # Closing the socket without a response is what a lost answer looks like to the client;
    # the request entry keeps status None to show nothing was sent back.
    if request.transport is not None:
        request.transport.abort()
    return asyncio.CancelledError()


def _s3_error(code: str) -> str:
    return f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code></Error>"


def _error(status: int, code: str, msg: str) -> web.Response:
    return web.json_response({"success": False, "error": code, "msg": msg}, status=status)


async def _json_body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _int(value: Any) -> int | None:
    number = _float(value)
    return int(number) if number is not None else None


def _float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def geolocation_code(geolocation: Any) -> str | None:
    """What Vast's server-side ``geolocation`` filter compares: a trailing two-letter code only.

    Full country names ("Guangdong, China") and null yield None, so ``notin`` lets them through.
    """
    if not isinstance(geolocation, str):
        return None
    tail = geolocation.rsplit(",", 1)[-1].strip()
    return tail.upper() if len(tail) == 2 and tail.isalpha() else None


def _offer_field(offer: dict[str, Any], key: str) -> Any:
    key = _FIELD_ALIASES.get(key, key)
    if key == "verified":
        return offer.get("verification") == "verified"
    if key == "geolocation":
        return geolocation_code(offer.get("geolocation"))
    return offer.get(key)


def _coerce_pair(actual: Any, wanted: Any) -> tuple[Any, Any]:
    # The CLI sends numbers and booleans as strings; compare like with like.
    if isinstance(actual, bool) or isinstance(wanted, bool):
        return _as_bool(actual), _as_bool(wanted)
    if isinstance(actual, int | float) or isinstance(wanted, int | float):
        a, w = _float(actual), _float(wanted)
        if a is not None and w is not None:
            return a, w
    return actual, wanted


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1")
    return bool(value)


def _matches(actual: Any, condition: dict[str, Any]) -> bool:
    for op, wanted in condition.items():
        if op in ("in", "notin"):
            values = wanted if isinstance(wanted, list) else [wanted]
            hit = actual is not None and any(_equal(actual, v) for v in values)
            if hit != (op == "in"):
                return False
            continue
        if op == "eq":
            if actual is None or not _equal(actual, wanted):
                return False
            continue
        if op == "neq":
            if actual is not None and _equal(actual, wanted):
                return False
            continue
        if actual is None:
            return False
        a, w = _coerce_pair(actual, wanted)
        try:
            ok = {"gt": a > w, "gte": a >= w, "lt": a < w, "lte": a <= w}[op]
        except TypeError:
            return False
        if not ok:
            return False
    return True


def _equal(actual: Any, wanted: Any) -> bool:
    a, w = _coerce_pair(actual, wanted)
    return bool(a == w)


def _ordered(rows: list[dict[str, Any]], order: Any) -> list[dict[str, Any]]:
    if not isinstance(order, list):
        raise ValueError("order must be a list of [field, direction]")
    for spec in reversed(order):
        if not isinstance(spec, list | tuple) or not spec:
            raise ValueError("order must be a list of [field, direction]")
        column = _FIELD_ALIASES.get(str(spec[0]), str(spec[0]))
        descending = len(spec) > 1 and str(spec[1]).lower() == "desc"
        present = [r for r in rows if r.get(column) is not None]
        missing = [r for r in rows if r.get(column) is None]
        present.sort(key=lambda r: _sort_key(r.get(column)), reverse=descending)
        rows = present + missing  # missing values last either way
    return rows


def _sort_key(value: Any) -> tuple[int, Any]:
    number = _float(value)
    return (0, number) if number is not None else (1, str(value))


def _encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": offset}).encode()).decode().rstrip("=")


def _decode_token(token: str) -> int | None:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, binascii.Error):
        return None
    offset = data.get("o") if isinstance(data, dict) else None
    return offset if isinstance(offset, int) and offset >= 0 else None
