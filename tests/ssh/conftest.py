"""Fixtures for the SSH tests: generated keys, a temp instance root, the real simulated sshd on
loopback driven by a FakeClock, and a fake ComfyUI (aiohttp) to reach through direct-tcpip."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest
from aiohttp import web

from bot.clock import FakeClock
from bot.sim.sshd import SimSshServer, make_client_key
from bot.watch.ssh import SshLogSession
from tests.ssh.helpers import FakeComfy, RawFactory, SessionFactory, SimFactory, endpoint


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
