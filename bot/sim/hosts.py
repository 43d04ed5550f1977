"""The hosts an instance talks to besides Vast, faked on loopback: ComfyUI's HTTP API (behind
the Instance Portal's Caddy placeholder until it is up) and the script URL's host (GitHub's raw
files and gist API)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web

from bot.sim.scenarios import Scenario

SYSTEM_STATS: dict[str, Any] = {
    "system": {"os": "posix", "ram_total": 67_430_000_000, "ram_free": 60_120_000_000,
               "comfyui_version": "0.3.64", "python_version": "3.12.3", "pytorch_version": "2.8.0+cu128",
               "embedded_python": False, "argv": ["main.py", "--port", "18188"]},
    "devices": [{"name": "cuda:0 NVIDIA GeForce RTX 3090 : cudaMallocAsync", "type": "cuda", "index": 0,
                 "vram_total": 25_393_692_672, "vram_free": 24_777_457_664}],
}


class FakeComfyUI:
    """ComfyUI's HTTP API on loopback: Caddy's placeholder (502, ``X-Portal-Placeholder``) until up."""

    def __init__(self) -> None:
        self.up = False
        self.port = 0
        self.hits = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/system_stats", self._stats)
        app.router.add_get("/api/system_stats", self._stats)
        app.router.add_get("/queue", self._queue)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _placeholder(self) -> web.Response:
        return web.Response(status=502, text="<html><body>Loading ComfyUI...</body></html>",
                            content_type="text/html", headers={"X-Portal-Placeholder": "true"})

    async def _stats(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.json_response(SYSTEM_STATS) if self.up else self._placeholder()

    async def _queue(self, request: web.Request) -> web.Response:
        if not self.up:
            return self._placeholder()
        return web.json_response({"queue_running": [], "queue_pending": []})


class FakeGistHost:
    """The script URL's host on loopback: serves the scenario's script path with its status code."""

    def __init__(self, scenario: Scenario, body: bytes) -> None:
        self.scenario = scenario
        self.body = body
        self.port = 0
        self.hits: list[str] = []
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> int:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._serve)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _serve(self, request: web.Request) -> web.Response:
        self.hits.append(request.path)
        if request.path.startswith("/gists/"):
            return self._gist_api(request.path.removeprefix("/gists/").strip("/"))
        # GitHub's raw host answers a missing file or revision with a 14-byte text body.
        if request.path != self.scenario.script_path or self.scenario.script_status != 200:
            status = self.scenario.script_status if request.path == self.scenario.script_path else 404
            return web.Response(status=status, text="404: Not Found")
        return web.Response(body=self.body if request.method != "HEAD" else None,
                            content_type="text/plain", headers={"Content-Length": str(len(self.body))})

    def _gist_api(self, gist_id: str) -> web.Response:
        # GitHub's gist API: the files the gist holds and its revision history (newest first).
        parts = self.scenario.script_path.strip("/").split("/")
        if len(parts) < 2 or parts[1] != gist_id:
            return web.json_response({"message": "Not Found"}, status=404)
        files = {name: {"filename": name, "raw_url": f"{self.base_url}/{parts[0]}/{gist_id}/raw/{name}"}
                 for name in self.scenario.gist_files}
        history = [{"version": "c0ffee" + "0" * 34}, {"version": "b4dcafe" + "0" * 33}]
        return web.json_response({"id": gist_id, "files": files, "history": history})


def script_body() -> bytes:
    """The provisioning script the gist host serves when a scenario gives none."""
    # Serve our real script when the checkout has it, so a preflight sees what an instance would.
    path = Path(__file__).resolve().parents[2] / "deploy" / "provision.sh"
    if path.is_file():
        return path.read_bytes()
    return b"#!/usr/bin/env bash\nset -Eeuo pipefail\necho 'vastops provision stand-in'\n"
