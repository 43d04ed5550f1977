"""Fixtures for the SSH tests: generated keys, a temp instance root, the real simulated sshd on
loopback driven by a FakeClock, and a fake ComfyUI (aiohttp) to reach through direct-tcpip."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import pytest
from aiohttp import web

from bot.clock import FakeClock
from bot.sim.sshd import SimSshServer, make_client_key
from bot.watch.ssh import SshEndpoint, SshLogSession

SYSTEM_STATS = {
    "system": {"os": "posix", "comfyui_version": "0.3.40", "python_version": "3.12.3",
               "pytorch_version": "2.8.0+cu128"},
    "devices": [{"name": "cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync", "type": "cuda", "index": 0,
                 "vram_total": 25393692672, "vram_free": 24777457664}],
}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "id_ed25519"
    make_client_key(path)
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The instance's ``/``: /workspace and /var/log exist, as on a Vast image."""
    r = tmp_path / "instance"
    (r / "workspace").mkdir(parents=True)
    (r / "var" / "log" / "portal").mkdir(parents=True)
    return r


SimFactory = Callable[..., Awaitable[SimSshServer]]


@pytest.fixture
async def make_sim(root: Path, key_path: Path, clock: FakeClock) -> AsyncIterator[SimFactory]:
    servers: list[SimSshServer] = []

    async def factory(**kwargs: object) -> SimSshServer:
        kwargs.setdefault("authorized_key", Path(str(key_path) + ".pub"))
        kwargs.setdefault("clock", clock)
        srv = SimSshServer(root, **kwargs)  # type: ignore[arg-type]
        servers.append(srv)
        await srv.start()
        return srv

    yield factory
    for srv in servers:
        await srv.stop()


@pytest.fixture
async def sim(make_sim: SimFactory) -> SimSshServer:
    """A server that is up at once (no boot delay)."""
    srv = await make_sim()
    await srv.wait_listening()
    return srv


def endpoint(srv: SimSshServer) -> SshEndpoint:
    return SshEndpoint("127.0.0.1", srv.port, "direct")


SessionFactory = Callable[..., Awaitable[SshLogSession]]


@pytest.fixture
async def connect(key_path: Path) -> AsyncIterator[SessionFactory]:
    """``await connect(srv, known_host_key=None, key_path=...)``: a real client session, closed after."""
    opened: list[SshLogSession] = []

    async def factory(srv: SimSshServer, **kwargs: object) -> SshLogSession:
        kwargs.setdefault("key_path", key_path)
        kwargs.setdefault("known_host_key", None)
        kwargs.setdefault("connect_timeout", 5.0)
        s = await SshLogSession.connect(endpoint(srv), **kwargs)  # type: ignore[arg-type]
        opened.append(s)
        return s

    yield factory
    for s in opened:
        await s.close()


@pytest.fixture
async def session(sim: SimSshServer, connect: SessionFactory) -> SshLogSession:
    return await connect(sim)


@dataclass
class FakeComfy:
    """A fake ComfyUI whose /system_stats answer the test chooses through ``mode``."""

    port: int = 0
    mode: str = "ok"
    hits: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def system_stats(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        if self.mode == "ok":
            return web.json_response(SYSTEM_STATS)
        if self.mode == "placeholder":
            # Caddy's spinner page as seen through a Cloudflare tunnel: 200, HTML, the header.
            return web.Response(text="<html>loading</html>", content_type="text/html",
                                headers={"X-Portal-Placeholder": "true"})
        if self.mode == "502":
            return web.Response(status=502, text="Bad Gateway")
        if self.mode == "html":
            return web.Response(text="<html>ComfyUI</html>", content_type="text/html")
        if self.mode == "hang":
            await self.release.wait()  # a wedged app: accepts, never answers
            return web.Response(status=504)
        if self.mode == "chunked":
            resp = web.StreamResponse()
            resp.content_type = "application/json"
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            await resp.write(b'{"system": {}, ')
            await resp.write(b'"devices": [{"name": "cpu"}]}')
            await resp.write_eof()
            return resp
        raise AssertionError(self.mode)


@pytest.fixture
async def comfy() -> AsyncIterator[FakeComfy]:
    fake = FakeComfy()
    app = web.Application()
    app.router.add_get("/system_stats", fake.system_stats)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.port = runner.addresses[0][1]
    yield fake
    fake.release.set()
    await runner.cleanup()


@pytest.fixture
def free_port() -> int:
    """A loopback port nothing listens on (bound briefly to learn a free number)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


RawFactory = Callable[..., Awaitable[asyncssh.SSHClientConnection]]


@pytest.fixture
async def raw_connect(key_path: Path) -> AsyncIterator[RawFactory]:
    """A plain asyncssh client, for exercising the simulated server directly."""
    opened: list[asyncssh.SSHClientConnection] = []

    async def factory(srv: SimSshServer, username: str = "root") -> asyncssh.SSHClientConnection:
        conn = await asyncssh.connect(
            "127.0.0.1", srv.port, username=username, client_keys=[str(key_path)], known_hosts=None,
            config=None, agent_path=None, gss_host=None, connect_timeout=5,
        )
        opened.append(conn)
        return conn

    yield factory
    for conn in opened:
        conn.close()
        await conn.wait_closed()
