"""In-process Vast.ai simulator: an aiohttp server speaking Vast's paths and JSON shapes.

``VastSim`` is the HTTP face of a ``Fleet`` (``bot.sim.instances``: instances, lifecycle,
billing): offer search and the instance list with Vast's query semantics (``bot.sim.query``),
create, show, destroy, container logs behind a ``result_url``, the current user, Vast's auth
quirks, and injectable faults and rate limits (``bot.sim.faults``). The real client is tested
against it over loopback HTTP.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from bot.clock import Clock
from bot.sim.faults import (
    FAULT_KINDS,
    PUBLISHED_RATE_LIMITS,
    FaultKind,
    FaultPlan,
    RateLimiter,
    canned_response,
    dropped,
    hang,
)
from bot.sim.instances import ContainerLogs, Fleet
from bot.sim.query import (
    QueryError,
    as_float,
    as_int,
    decode_token,
    encode_token,
    filter_instances,
    geolocation_code,
    search_offers,
)

__all__ = [
    "FAULT_KINDS", "PUBLISHED_RATE_LIMITS", "ContainerLogs", "FaultKind", "SimRequest", "VastSim",
    "geolocation_code",
]

log = logging.getLogger(__name__)

RUNTYPE_TOKENS = frozenset(
    {"ssh", "ssh_proxy", "ssh_direc", "ssh_direct", "jupyter", "jupyter_proxy", "jupyter_direc",
     "jupyter_direct", "args"}
)

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
class _LogRequest:
    instance_id: int
    tail: int
    ready_at: float
    daemon: bool


class VastSim(Fleet):
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
        start_date_offset: float = 0.0,
    ) -> None:
        super().__init__(clock, catalogue=catalogue, provisioning_delay=provisioning_delay,
                         created_to_loading=created_to_loading, loading_to_running=loading_to_running,
                         destroy_delay=destroy_delay, start_date_offset=start_date_offset)
        self.api_key = api_key
        self.logs_delay = logs_delay
        self.initial_credit = credit
        self.email = email
        self.page_size = page_size
        self.rate_limits = RateLimiter(rate_limits)
        self.hang_seconds = hang_seconds
        self.calls: list[tuple[str, str]] = []
        self.requests: list[SimRequest] = []
        # Requests being handled now: a driver moving a FakeClock waits for 0 before advancing.
        self.in_flight = 0
        self.on_create: CreateHook | None = None
        self.faults = FaultPlan()
        self._log_requests: dict[str, _LogRequest] = {}
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self.base_url: str | None = None

    # ------------------------------------------------------------------ serving

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
        self.faults.add(method, path_pattern, kind, times)

    def clear_faults(self) -> None:
        self.faults.clear()

    def requests_to(self, endpoint: str) -> list[SimRequest]:
        return [r for r in self.requests if r.endpoint == endpoint]

    # ------------------------------------------------------------------ middlewares

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        entry = SimRequest(
            method=request.method,
            path=request.path,
            query=request.query_string,
            url=str(request.rel_url),
            t=self.clock.now(),
            endpoint=f"{request.method} {_template(request)}",
            had_auth_header="Authorization" in request.headers,
        )
        self.calls.append((request.method, request.path))
        self.requests.append(entry)
        request[_ENTRY] = entry
        self.in_flight += 1
        try:
            response = await handler(request)
        finally:
            self.in_flight -= 1
        entry.status = response.status
        return response

    @web.middleware
    async def _faults_mw(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        fault = self.faults.take(request.method, request.path, _template(request))
        if fault is None:
            return await handler(request)
        log.debug("sim fault %s on %s %s", fault.kind, request.method, request.path)
        canned = canned_response(fault.kind)
        if canned is not None:
            return canned
        if fault.kind == "timeout":
            await hang(self._stopping, self.hang_seconds)
            raise dropped(request)
        # drop_after_apply: the work happens, the answer never arrives.
        await handler(request)
        raise dropped(request)

    @web.middleware
    async def _rate_limit_mw(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        entry: SimRequest = request[_ENTRY]
        refused = self.rate_limits.refuse(entry.endpoint, entry.t)
        return refused if refused is not None else await handler(request)

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

    # ------------------------------------------------------------------ routes

    async def _search(self, request: web.Request) -> web.Response:
        try:
            offers = search_offers(self.offers, await _json_body(request))
        except QueryError as exc:
            return _error(400, exc.code, exc.msg)
        return web.json_response({"offers": offers})

    async def _create(self, request: web.Request) -> web.Response:
        offer_id = as_int(request.match_info["id"])
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
        disk = as_float(body.get("disk", 10))
        if disk is None or disk < 8:
            return _error(400, "invalid_args", "disk must be at least 8 GB")
        runtype = body.get("runtype") or "ssh"
        if not isinstance(runtype, str) or not set(runtype.split()) <= RUNTYPE_TOKENS:
            return _error(400, "invalid_args", f"invalid runtype {runtype!r}")
        if len(str(body.get("onstart") or "")) + len(str(body.get("args_str") or "")) > 4096:
            return _error(400, "invalid_args", "onstart and args are longer than 4096 characters")
        instance_id = self.new_instance(offer, body, created_at=self.clock.now())
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
        self.reap()
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
        everything = [self.view(i) for i in sorted(self.instances)]
        try:
            rows = filter_instances(everything, filters, order)
        except QueryError as exc:
            return _error(400, exc.code, exc.msg)
        offset: int | None = decode_token(q["after_token"]) if q.get("after_token") else 0
        if offset is None:
            return _error(400, "invalid_token", "invalid pagination token")
        page = rows[offset : offset + limit]
        next_token = encode_token(offset + limit) if offset + limit < len(rows) else None
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
        instance_id = as_int(request.match_info["id"])
        row = self.row(instance_id) if instance_id is not None else None
        return web.json_response({"instances": row})

    async def _destroy(self, request: web.Request) -> web.Response:
        self.reap()
        instance_id = as_int(request.match_info["id"])
        if instance_id is None or instance_id not in self.instances:
            return _error(404, "no_such_instance", f"Instance {request.match_info['id']} not found.")
        self.destroy(instance_id)  # billing stops here
        return web.json_response({"success": True, "msg": f"destroying instance {instance_id}."})

    async def _request_logs(self, request: web.Request) -> web.Response:
        self.reap()
        instance_id = as_int(request.match_info["id"])
        if instance_id is None or instance_id not in self.instances:
            return _error(404, "invalid_id", f"Instance {request.match_info['id']} not found.")
        body = await _json_body(request)
        body = body if isinstance(body, dict) else {}
        tail = as_int(body.get("tail")) or 1000
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
        text = (f"vast daemon: instance {job.instance_id} container managed by sim\n" if job.daemon
                else await self.container_logs(job.instance_id))
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


# ---------------------------------------------------------------------- helpers


def _template(request: web.Request) -> str:
    route = request.match_info.route.resource
    return route.canonical if route is not None else request.path


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
