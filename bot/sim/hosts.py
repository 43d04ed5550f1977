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
        # The prompt queue and history ComfyUI reports; tests and scenarios play prompts through them.
        self.queue_running: list[str] = []
        self.queue_pending: list[str] = []
        self.history: dict[str, dict[str, Any]] = {}
        self._runner: web.AppRunner | None = None

    def start_prompt(self, prompt_id: str) -> None:
        """A prompt starts running (ComfyUI runs one at a time: later ones wait in the queue)."""
        (self.queue_pending if self.queue_running else self.queue_running).append(prompt_id)

    def finish_prompt(self) -> str | None:
        """The running prompt completes into the history; the next queued one starts."""
        if not self.queue_running:
            return None
        done = self.queue_running.pop(0)
        self.history[done] = {"prompt": [0, done, {}, {}, []], "outputs": {},
                              "status": {"status_str": "success", "completed": True, "messages": []}}
        if self.queue_pending:
            self.queue_running.append(self.queue_pending.pop(0))
        return done

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/system_stats", self._stats)
        app.router.add_get("/api/system_stats", self._stats)
        app.router.add_get("/queue", self._queue)
        app.router.add_get("/history", self._history)
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
        # ComfyUI lists each queue item as [number, prompt_id, prompt, extra_data, outputs_to_execute].
        def item(n: int, prompt_id: str) -> list[Any]:
            return [n, prompt_id, {}, {}, []]

        return web.json_response({
            "queue_running": [item(n, p) for n, p in enumerate(self.queue_running)],
            "queue_pending": [item(n + len(self.queue_running), p) for n, p in enumerate(self.queue_pending)],
        })

    async def _history(self, request: web.Request) -> web.Response:
        if not self.up:
            return self._placeholder()
        items = list(self.history.items())
        raw = request.query.get("max_items")
        if raw is not None and raw.isdigit():
            items = items[-int(raw):] if int(raw) > 0 else []
        return web.json_response(dict(items))


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
