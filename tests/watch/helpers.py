"""Shared rig for the safeguard tests: the watch engine against real pieces.

The Vast simulator serves HTTP on loopback; a small fault proxy sits between it and the client so
a test can answer any request the way a failing Vast does (a revoked key, a bare 404, malformed
JSON, ``{"instances": null}``) — shapes the simulator itself does not produce. Each instance gets
a real asyncssh server; the database is a real SQLite file; time is a FakeClock.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bot.clock import FakeClock
from bot.db.models import Event, Rental, RentalState
from bot.db.store import Store
from bot.provisioning.contract import EVENT_PREFIX
from bot.sim.api import VastSim
from bot.sim.catalog import default_catalogue
from bot.sim.sshd import SimSshServer, make_client_key
from bot.vast.client import NO_SPACING, VastClient
from bot.vast.models import OfferQuery
from bot.watch.engine import WatchEngine, WatchPolicy
from bot.watch.lease import LeasePolicy
from bot.watch.redact import Redactor

log = logging.getLogger(__name__)

LOG = "/workspace/vastops/provision.log"
POLL = 15.0
SECRET = "hf_secretvalue1234567890abcdefghijkl"

Responder = Callable[[], web.StreamResponse]
Action = Callable[[], None]


def ev(event: str, st: str = "ok", seq: int = 1, **extra: Any) -> str:
    body = {"v": 1, "run": "r1", "att": 1, "seq": seq, "ts": "2026-02-05T10:00:00Z", "ev": event, "st": st, **extra}
    return EVENT_PREFIX + json.dumps(body, separators=(",", ":")) + "\n"


def kinds(events: list[Event], kind: str) -> list[dict[str, Any]]:
    return [e.payload for e in events if e.kind == kind]


# ---------------------------------------------------------------------- canned Vast answers
def bare_404() -> web.Response:
    """A 404 with no Vast error code (a proxy or load balancer hiccup, not Vast saying "gone")."""
    return web.Response(status=404, text="<html><body>404 Not Found</body></html>", content_type="text/html")


def revoked_key() -> web.Response:
    return web.json_response({"success": False, "error": "auth_error", "msg": "Invalid user key"}, status=401)


def unknown_key() -> web.Response:
    """Vast's quirk: a key it does not know is a 404 carrying ``auth_error``."""
    return web.json_response({"success": False, "error": "auth_error", "msg": "Invalid user key"}, status=404)


def unavailable() -> web.Response:
    return web.Response(status=503, text="Service Unavailable", content_type="text/plain")


def malformed() -> web.Response:
    return web.Response(status=200, text='{"instances": [{"id": 1, "oops"', content_type="application/json")


def null_instances() -> web.Response:
    return web.json_response({"success": True, "instances": None})


@dataclass
class _Rule:
    method: str
    pattern: str
    responder: Responder | None  # None: forward, after running ``action``
    times: int
    hits: int = 0
    action: Action | None = None


class FaultProxy:
    """Forwards every request to the simulator unless a rule answers it instead."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.rules: list[_Rule] = []
        self.answered: list[tuple[str, str]] = []  # requests a rule answered (never reached Vast)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    def add(self, method: str, pattern: str, responder: Responder, times: int = 1) -> _Rule:
        rule = _Rule(method.upper(), pattern, responder, times)
        self.rules.append(rule)
        return rule

    def before(self, method: str, pattern: str, action: Action, times: int = 1) -> _Rule:
        """Run ``action`` when a matching request arrives, then forward it (something happening
        elsewhere at the moment the bot asks Vast)."""
        rule = _Rule(method.upper(), pattern, None, times, action=action)
        self.rules.append(rule)
        return rule

    def clear(self) -> None:
        self.rules.clear()

    async def start(self) -> str:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        for rule in self.rules:
            if rule.hits < rule.times and rule.method in ("*", request.method) \
                    and fnmatch.fnmatch(request.path, rule.pattern):
                rule.hits += 1
                if rule.action is not None:
                    rule.action()
                if rule.responder is None:
                    break
                self.answered.append((request.method, request.path))
                return rule.responder()
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
        async with self._session.request(request.method, self.upstream + str(request.rel_url), headers=headers,
                                         data=await request.read()) as upstream:
            body = await upstream.read()
            return web.Response(status=upstream.status, body=body,
                                content_type=upstream.content_type or "application/octet-stream")


class Notifier:
    """Collects what the engine delivers; ``hold`` makes every delivery hang until released."""

    def __init__(self) -> None:
        self.delivered: list[Event] = []
        self.alerts: list[str] = []
        self.hold = False
        self.release = asyncio.Event()
        self.hung = 0

    async def notify(self, rental: Rental, event: Event) -> None:
        if self.hold:
            self.hung += 1
            await self.release.wait()  # a hung connection to Discord
        self.delivered.append(event)

    async def alert(self, text: str) -> None:
        self.alerts.append(text)


@dataclass
class Rig:
    tmp: Path
    clock: FakeClock
    sim: VastSim
    proxy: FaultProxy
    vast: VastClient
    key_path: Path
    db_path: Path
    refuse_forever: bool = False
    servers: dict[int, SimSshServer] = field(default_factory=dict)
    roots: dict[int, Path] = field(default_factory=dict)
    store: Store | None = None
    engine: WatchEngine | None = None
    notifier: Notifier = field(default_factory=Notifier)
    pump: bool = True  # deliver after each poll (the deliverer task's job, run inline for the test)

    def append(self, instance_id: int, text: str) -> None:
        file = self.roots[instance_id] / LOG.lstrip("/")
        file.parent.mkdir(parents=True, exist_ok=True)
        with file.open("ab") as fh:
            fh.write(text.encode())

    async def open_engine(self, **policy: Any) -> WatchEngine:
        # A short busy timeout: a locked database fails a write at once instead of after 10 s.
        self.store = await Store.open(self.db_path, busy_timeout=0.05)
        values: dict[str, Any] = {"poll_interval": POLL, "log_path": LOG, "ssh_key_path": self.key_path,
                                  "ssh_boot_grace": 120.0, "stall_timeout": 300.0, "connect_timeout": 2.0}
        values.update(policy)
        self.engine = WatchEngine(store=self.store, vast=self.vast, clock=self.clock, policy=WatchPolicy(**values),
                                  redactor=Redactor({"HF_TOKEN": SECRET}), notifier=self.notifier)
        # rent() takes offers from any country: the re-check after rent must not tear them down for it.
        self.engine.lease.policy = LeasePolicy(excluded_countries=())
        await self.engine.reattach()
        return self.engine

    async def rent(self) -> tuple[Rental, int]:
        assert self.store is not None and self.engine is not None
        offers = await self.vast.search_offers(OfferQuery(limit=5, max_dph=5, verified=False, excluded_countries=[],
                                                           disk_gb=20))
        offer = offers[0]
        now = self.clock.now()
        rental = await self.store.create_rental(label=f"vastops-test-{offer.id}", requester_id=1,
                                                requester_name="ada", offer_id=offer.id,
                                                quoted_dph=offer.dph_total, now=now, state=RentalState.CREATING,
                                                machine_id=offer.machine_id)
        instance_id = await self.vast.create_instance(offer.id, image="img", disk_gb=20, label=rental.label)
        rental = await self.store.update_rental(rental.id, now=now, instance_id=instance_id, started_at=now)
        await self.store.transition_rental(rental.id, to=RentalState.PROVISIONING, now=now)
        rental = await self.store.get_rental(rental.id)
        assert rental is not None
        await self.engine.attach(rental)
        return rental, instance_id

    async def poll(self, n: int = 1) -> None:
        assert self.engine is not None
        for _ in range(n):
            await self.clock.advance(POLL)
            try:
                await self.engine.tick()
                if self.pump:
                    await self.engine.pump()
            except Exception:  # as the engine's own loop does: report the failed poll, go on
                log.exception("poll failed")

    async def close_engine(self) -> None:
        if self.engine is not None:
            await self.engine.stop()
        if self.store is not None:
            await self.store.close()
        self.engine = self.store = None

    async def restart(self, **policy: Any) -> WatchEngine:
        await self.close_engine()
        return await self.open_engine(**policy)

    async def events(self, rental_id: int) -> list[Event]:
        assert self.store is not None
        return await self.store.events_for(rental_id)

    async def state(self, rental_id: int) -> RentalState:
        assert self.store is not None
        rental = await self.store.get_rental(rental_id)
        assert rental is not None
        return rental.state

    def destroys(self, instance_id: int) -> int:
        """DELETE calls for the instance that reached the simulator."""
        return sum(1 for m, p in self.sim.calls if m == "DELETE" and p.rstrip("/").endswith(f"/{instance_id}"))

    def log_reads(self) -> int:
        """Container-log requests (``request_logs``) that reached the simulator."""
        return sum(1 for m, p in self.sim.calls if m == "PUT" and "/request_logs/" in p)

    def live(self, instance_id: int) -> bool:
        return instance_id in self.sim.instances


async def make_rig(tmp_path: Path) -> AsyncIterator[Rig]:
    clock = FakeClock(start=1_770_285_600.0)
    sim = VastSim(clock, catalogue=default_catalogue(), api_key="sim-key", created_to_loading=5,
                  loading_to_running=30, logs_delay=0)
    base = await sim.start()
    proxy = FaultProxy(base)
    proxy_base = await proxy.start()
    key_path = tmp_path / "id_ed25519"
    make_client_key(key_path)
    # One attempt per call: a poll sees Vast's answer, not the client's retries (which sleep on the clock).
    vast = VastClient(proxy_base, "sim-key", clock=clock, min_spacing=NO_SPACING, max_attempts=1)
    r = Rig(tmp=tmp_path, clock=clock, sim=sim, proxy=proxy, vast=vast, key_path=key_path,
            db_path=tmp_path / "db.sqlite")

    async def on_create(row: dict[str, Any]) -> None:
        iid = int(row["id"])
        root = tmp_path / f"inst{iid}"
        (root / "workspace").mkdir(parents=True)
        server = SimSshServer(root, authorized_key=Path(str(key_path) + ".pub"), clock=clock,
                              refuse_forever=r.refuse_forever)
        port = await server.start()
        r.servers[iid], r.roots[iid] = server, root
        sim.update_instance(iid, public_ipaddr="127.0.0.1", ports={"22/tcp": [{"HostIp": "0.0.0.0",
                                                                              "HostPort": str(port)}]},
                            ssh_host="127.0.0.1", ssh_port=port)

    sim.on_create = on_create
    try:
        yield r
    finally:
        r.notifier.release.set()
        await r.close_engine()
        for server in r.servers.values():
            await server.stop()
        await vast.aclose()
        await proxy.stop()
        await sim.stop()
