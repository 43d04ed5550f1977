"""Types and stand-ins for the SSH tests: the factory types of the SSH server, session and raw
connection fixtures, a fake ComfyUI, and the endpoint of a simulated server."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncssh
from aiohttp import web

from bot.sim.sshd import SimSshServer
from bot.watch.ssh import SshEndpoint, SshLogSession

SYSTEM_STATS = {
    "system": {"os": "posix", "comfyui_version": "0.3.40", "python_version": "3.12.3",
               "pytorch_version": "2.8.0+cu128"},
    "devices": [{"name": "cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync", "type": "cuda", "index": 0,
                 "vram_total": 25393692672, "vram_free": 24777457664}],
}


SimFactory = Callable[..., Awaitable[SimSshServer]]


def endpoint(srv: SimSshServer) -> SshEndpoint:
    return SshEndpoint("127.0.0.1", srv.port, "direct")


SessionFactory = Callable[..., Awaitable[SshLogSession]]


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


RawFactory = Callable[..., Awaitable[asyncssh.SSHClientConnection]]
