"""Model hosts and git hosts on loopback, for the preflight's rehearsal scenarios and its tests.

``FakeHub`` answers, for any origin it is told about, the way the real hosts do:

* model files as Hugging Face serves them: ``/resolve/`` answers 302 to a CDN on *another* origin
  (a second port, so an ``Authorization`` header must not follow), with ``X-Linked-Size``; the CDN
  honours ``Range: bytes=0-0`` with ``Content-Range``. A gated repo answers 401 ``GatedRepo`` without a
  token, 401 with an invalid one, 403 ``GatedRepo`` with a valid token whose account has not accepted
  the terms. ``/api/whoami-v2`` and ``/api/models/<repo>`` answer like the Hub's API.
* files needing a token (Civitai-style) answer 401 without it or with an invalid one, 403 with a valid
  token of an account without access.
* git repositories over smart HTTP (``info/refs?service=git-upload-pack``: pkt-lines), 401 for a
  repository that does not exist (as GitHub does), and ``requirements.txt`` raw at a ref
  (``raw.githubusercontent.com/<o>/<r>/<ref>/...`` or ``<repo>/raw/<ref>/...``).

``url_map`` is what the preflight's ``url_map`` takes: every origin -> this hub. Every request is kept
in ``requests`` (path, query, headers) so tests can check what was sent where.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from aiohttp import web

HF_HOSTS = ("huggingface.co", "hf.co")


def fake_commit(seed: str) -> str:
    return hashlib.sha1(seed.encode()).hexdigest()  # an id, not security


@dataclass
class HubFile:
    url: str
    size: int = 1024
    token: str | None = None  # the Bearer token this file needs (None: public)
    other_tokens: tuple[str, ...] = ()  # valid tokens of accounts without access to this file (403)
    gated: bool = False  # a Hugging Face gated repo: needs a valid token whose account accepted the terms
    accepted: bool = False  # the valid tokens' account accepted the gated repo's terms
    status: int | None = None  # answer this instead (e.g. 500)
    content_type: str = "application/octet-stream"


@dataclass
class HubRepo:
    url: str
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit (default: main)
    tags: dict[str, str] = field(default_factory=dict)
    requirements: str | None = None  # requirements.txt at every ref (None: the repo has none)

    def __post_init__(self) -> None:
        if not self.branches:
            self.branches = {"main": fake_commit(self.url + "#main")}

    @property
    def head(self) -> str:
        return next(iter(self.branches.values()))

    def commit_of(self, ref: str) -> str | None:
        if ref == "HEAD":
            return self.head
        for table in (self.branches, self.tags):
            if ref in table:
                return table[ref]
        commits = [*self.branches.values(), *self.tags.values()]
        return next((c for c in commits if len(ref) >= 7 and c.startswith(ref)), None)


@dataclass
class HubRequest:
    port: int
    path: str
    query: str
    headers: dict[str, str]


def _pkt(line: str) -> bytes:
    data = line.encode()
    return f"{len(data) + 4:04x}".encode() + data


def _advertisement(repo: HubRepo) -> bytes:
    out = _pkt("# service=git-upload-pack\n") + b"0000"
    refs = [("HEAD", repo.head)] + [(f"refs/heads/{n}", c) for n, c in repo.branches.items()]
    refs += [(f"refs/tags/{n}", c) for n, c in repo.tags.items()]
    for i, (name, commit) in enumerate(refs):
        caps = "\0multi_ack side-band-64k symref=HEAD:refs/heads/main agent=git/fake" if i == 0 else ""
        out += _pkt(f"{commit} {name}{caps}\n")
    return out + b"0000"


class FakeHub:
    """Loopback model and git hosts; ``hf_tokens`` are the tokens the Hub accepts as valid."""

    def __init__(self, files: list[HubFile] | None = None, repos: list[HubRepo] | None = None, *,
                 hf_tokens: tuple[str, ...] = ()) -> None:
        self.files = {f.url: f for f in files or []}
        self.repos = {r.url.rstrip("/").removesuffix(".git"): r for r in repos or []}
        self.hf_tokens = set(hf_tokens)
        self.requests: list[HubRequest] = []
        self.port = 0
        self.cdn_port = 0
        self._runner: web.AppRunner | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._serve)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        for _ in range(2):  # the hub, and its CDN on a second origin
            await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port, self.cdn_port = (addr[1] for addr in self._runner.addresses[:2])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeHub:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url_map(self) -> dict[str, str]:
        """Every origin this hub plays -> its loopback base (``/o/<host>``)."""
        origins = {"https://huggingface.co", "https://raw.githubusercontent.com", "https://github.com",
                   "https://civitai.com"}
        for url in [*self.files, *self.repos]:
            parts = urlsplit(url)
            origins.add(f"{parts.scheme}://{parts.netloc}")
        return {o: f"{self.base}/o/{urlsplit(o).netloc}" for o in sorted(origins)}

    def seen(self, needle: str) -> list[HubRequest]:
        return [r for r in self.requests if needle in r.path]

    # -- serving -----------------------------------------------------------------------------

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        port = request.transport.get_extra_info("sockname")[1] if request.transport else 0
        self.requests.append(HubRequest(port, request.path, request.query_string, dict(request.headers)))
        if port == self.cdn_port or request.path.startswith("/cdn/"):
            return self._cdn(request)
        parts = request.path.split("/", 3)
        if len(parts) < 4 or parts[1] != "o":
            return web.Response(status=404, text="not found")
        host, rest = parts[2], "/" + parts[3]
        url = f"https://{host}{rest}"
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip() or None
        if host in HF_HOSTS and rest == "/api/whoami-v2":
            if token in self.hf_tokens:
                return web.json_response({"type": "user", "name": "rehearsal"})
            return web.json_response({"error": "Invalid credentials in Authorization header"}, status=401)
        if host in HF_HOSTS and rest.startswith("/api/models/"):
            return self._hf_model_api(unquote(rest.removeprefix("/api/models/")))
        if request.query.get("service") == "git-upload-pack" and rest.endswith("/info/refs"):
            return self._refs(url.removesuffix("/info/refs"))
        raw = self._raw(host, rest)
        if raw is not None:
            return raw
        file = self.files.get(url)
        if file is None:
            headers = {"X-Error-Code": "EntryNotFound"} if host in HF_HOSTS else {}
            return web.Response(status=404, text="Entry not found", headers=headers)
        return self._file(file, host, token)

    def _file(self, file: HubFile, host: str, token: str | None) -> web.Response:
        if file.status is not None:
            return web.Response(status=file.status, text=f"HTTP {file.status}")
        if file.gated:
            if token is None:
                return web.Response(status=401, text="Access to model is restricted. Please log in.",
                                    headers={"X-Error-Code": "GatedRepo"})
            if token not in self.hf_tokens:
                return web.Response(status=401, text="Invalid credentials",
                                    headers={"X-Error-Message": "Invalid credentials in Authorization header"})
            if not file.accepted:
                return web.Response(status=403, text="you are not in the authorized list",
                                    headers={"X-Error-Code": "GatedRepo"})
        elif file.token is not None and token != file.token:
            # Civitai answers a missing or an expired key alike; a valid key without access gets 403.
            return web.Response(status=403 if token in file.other_tokens else 401, text="unauthorized")
        key = quote(json.dumps([file.url]), safe="")
        headers = {"Location": f"http://127.0.0.1:{self.cdn_port}/cdn/{key}"}
        if host in HF_HOSTS:
            headers["X-Linked-Size"] = str(file.size)
        return web.Response(status=302, headers=headers)

    def _cdn(self, request: web.Request) -> web.Response:
        try:
            url = json.loads(unquote(request.path.removeprefix("/cdn/")))[0]
        except (ValueError, IndexError):
            return web.Response(status=404)
        file = self.files.get(url)
        if file is None:
            return web.Response(status=404)
        if request.headers.get("Range") == "bytes=0-0":
            return web.Response(status=206, body=b"\0", content_type=file.content_type,
                                headers={"Content-Range": f"bytes 0-0/{file.size}"})
        return web.Response(status=200, body=b"\0" * min(file.size, 4096), content_type=file.content_type)

    def _hf_model_api(self, repo: str) -> web.Response:
        for file in self.files.values():
            parts = urlsplit(file.url)
            if parts.hostname in HF_HOSTS and parts.path.strip("/").startswith(repo + "/"):
                return web.json_response({"id": repo, "gated": "manual" if file.gated else False})
        return web.json_response({"error": "Repository not found"}, status=401,
                                 headers={"X-Error-Code": "RepoNotFound"})

    def _refs(self, repo_url: str) -> web.Response:
        repo = self.repos.get(repo_url.removesuffix(".git"))
        if repo is None:
            # GitHub asks for credentials rather than say a repository does not exist.
            return web.Response(status=401, text="Authentication required",
                                headers={"WWW-Authenticate": 'Basic realm="GitHub"'})
        return web.Response(body=_advertisement(repo), content_type="application/x-git-upload-pack-advertisement")

    def _raw(self, host: str, rest: str) -> web.Response | None:
        if not rest.endswith("/requirements.txt"):
            return None
        segments = rest.strip("/").split("/")
        if host == "raw.githubusercontent.com" and len(segments) >= 4:
            repo_url, ref = f"https://github.com/{segments[0]}/{segments[1]}", segments[2]
        elif "raw" in segments:
            i = segments.index("raw")
            repo_url = f"https://{host}/" + "/".join(s for s in segments[:i] if s != "-")
            ref = segments[i + 1] if len(segments) > i + 2 else ""
        else:
            return None
        repo = self.repos.get(repo_url)
        if repo is None or repo.commit_of(ref) is None or repo.requirements is None:
            return web.Response(status=404, text="404: Not Found")
        return web.Response(text=repo.requirements, content_type="text/plain")


def hub_from_toml(data: dict[str, Any]) -> FakeHub:
    """A hub from a scenario's ``[preflight]`` table: ``file``/``repo`` arrays and ``hf_tokens``."""
    files = [HubFile(**f) for f in data.get("file", [])]
    repos = [HubRepo(**r) for r in data.get("repo", [])]
    return FakeHub(files, repos, hf_tokens=tuple(data.get("hf_tokens", ())))
