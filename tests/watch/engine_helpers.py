"""The watch-engine rig: the Vast simulator over loopback HTTP, a real asyncssh server per instance, a
fake ComfyUI, a real SQLite file and a FakeClock, for the engine's tests (the safeguard tests' rig,
with a fault proxy in front of Vast, is in ``tests.watch.helpers``, with ``ev`` and ``kinds``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from bot.clock import FakeClock
from bot.db.models import Event, Rental, RentalState
from bot.db.store import Store
from bot.sim.api import VastSim
from bot.sim.catalog import default_catalogue
from bot.sim.sshd import SimSshServer, make_client_key
from bot.vast.client import NO_SPACING, VastClient
from bot.vast.models import OfferQuery
from bot.watch.engine import EV_MILESTONE, WatchEngine, WatchPolicy
from bot.watch.redact import Redactor
from tests.watch.helpers import LOG, POLL, kinds


class Comfy:
    """A fake ComfyUI reachable through the SSH server's port forwarding."""

    def __init__(self) -> None:
        self.up = False
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/system_stats", self._stats)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.port

    async def _stats(self, request: web.Request) -> web.Response:
        if not self.up:
            return web.Response(status=502, text="bad gateway")
        return web.json_response({"system": {"os": "posix"}, "devices": [{"name": "cuda:0"}]})

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@dataclass
class Rig:
    tmp: Path
    clock: FakeClock
    sim: VastSim
    vast: VastClient
    key_path: Path
    comfy: Comfy
    db_path: Path
    boot_delay: float = 0.0
    refuse_forever: bool = False
    servers: dict[int, SimSshServer] = field(default_factory=dict)
    roots: dict[int, Path] = field(default_factory=dict)
    store: Store | None = None
    engine: WatchEngine | None = None
    delivered: list[Event] = field(default_factory=list)

    def log_file(self, instance_id: int, path: str = LOG) -> Path:
        return self.roots[instance_id] / path.lstrip("/")

    def append(self, instance_id: int, text: str, path: str = LOG) -> None:
        file = self.log_file(instance_id, path)
        file.parent.mkdir(parents=True, exist_ok=True)
        with file.open("ab") as fh:
            fh.write(text.encode() if isinstance(text, str) else text)

    async def open_engine(self, **policy: Any) -> WatchEngine:
        self.store = await Store.open(self.db_path)
        rig = self

        class Collect:
            async def notify(self, rental: Rental, event: Event) -> None:
                rig.delivered.append(event)

        values: dict[str, Any] = {"poll_interval": POLL, "log_path": LOG, "ssh_key_path": self.key_path,
                                  "ssh_boot_grace": 120.0, "stall_timeout": 300.0, "connect_timeout": 2.0}
        values.update(policy)
        self.engine = WatchEngine(store=self.store, vast=self.vast, clock=self.clock, policy=WatchPolicy(**values),
                                  redactor=Redactor({"HF_TOKEN": "hf_secretvalue1234567890abcdefghijkl"}),
                                  notifier=Collect())
        await self.engine.reattach()
        return self.engine

    async def rent(self) -> tuple[Rental, int]:
        assert self.store is not None and self.engine is not None
        offers = await self.vast.search_offers(OfferQuery(limit=5, max_dph=5))
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
            await self.engine.tick()

    async def close_engine(self) -> None:
        if self.engine is not None:
            await self.engine.stop()
        if self.store is not None:
            await self.store.close()
        self.engine = self.store = None

    async def events(self, rental_id: int) -> list[Event]:
        assert self.store is not None
        return await self.store.events_for(rental_id)


async def make_rig(tmp_path: Path) -> AsyncIterator[Rig]:
    clock = FakeClock(start=1_770_285_600.0)
    sim = VastSim(clock, catalogue=default_catalogue(), api_key="sim-key", created_to_loading=5,
                  loading_to_running=30, logs_delay=0)
    base = await sim.start()
    key_path = tmp_path / "id_ed25519"
    make_client_key(key_path)
    comfy = Comfy()
    await comfy.start()
    vast = VastClient(base, "sim-key", clock=clock, min_spacing=NO_SPACING)
    r = Rig(tmp=tmp_path, clock=clock, sim=sim, vast=vast, key_path=key_path, comfy=comfy,
            db_path=tmp_path / "db.sqlite")

    async def on_create(row: dict[str, Any]) -> None:
        iid = int(row["id"])
        root = tmp_path / f"inst{iid}"
        (root / "workspace").mkdir(parents=True)
        server = SimSshServer(root, authorized_key=Path(str(key_path) + ".pub"), clock=clock,
                              boot_delay=r.boot_delay, refuse_forever=r.refuse_forever,
                              comfyui_port_map={18188: comfy.port})
        port = await server.start()
        r.servers[iid], r.roots[iid] = server, root
        sim.update_instance(iid, public_ipaddr="127.0.0.1", ports={"22/tcp": [{"HostIp": "0.0.0.0",
                                                                              "HostPort": str(port)}]},
                            ssh_host="127.0.0.1", ssh_port=port)

    sim.on_create = on_create
    yield r
    await r.close_engine()
    for server in r.servers.values():
        await server.stop()
    await vast.aclose()
    await comfy.stop()
    await sim.stop()



def milestone_names(events: list[Event]) -> list[str]:
    return [p["name"] for p in kinds(events, EV_MILESTONE)]
