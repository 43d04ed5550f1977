"""A real HTTP server on 127.0.0.1 (in a thread) serving canned routes, and settings built without .env."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bot.settings import Settings


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    # Held until set (or 5 s): lets a test see its client give up first.
    hold: threading.Event | None = None


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (the timeout test) leaves a broken pipe: expected, not worth a traceback.
        pass


class WebServer:
    """Routes by path (query ignored); unknown paths are 404. Records every request path."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                route = server.routes.get(self.path.split("?", 1)[0], Route(404, b"404: Not Found"))
                if route.hold is not None:
                    route.hold.wait(5)
                self.send_response(route.status)
                for key, value in route.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                self.wfile.write(route.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def add(self, path: str, body: bytes = b"", status: int = 200, **headers: str) -> str:
        self.routes[path] = Route(status, body, {k.replace("_", "-"): v for k, v in headers.items()})
        return self.base + path

    def redirect(self, path: str, to: str) -> str:
        return self.add(path, b"", 302, Location=to)


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings from explicit values only (no .env file), with a log path inside tmp_path."""
    values: dict[str, Any] = {
        "provision_log_path": str(tmp_path / "instance" / "vastops" / "provision.log"),
        "provision_script_url": "https://scripts.example.org/vastops/provision.sh",
        "provision_script_sha256": None,
        "hf_token": None,
        "civitai_token": None,
        "docker_image": "vastai/comfyui:@vastai-automatic-tag",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]
