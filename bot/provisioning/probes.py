"""Network probes of the manifest's URLs: what a model URL answers, what a git repository advertises,
and a node's ``requirements.txt``; each result cached per URL for a few minutes on the injected clock.

* A model is probed with a 1-byte ranged GET (``Range: bytes=0-0``), following redirects, reading
  headers only: HEAD is refused by the presigned storage URLs Civitai and Hugging Face redirect to, and
  a server that ignores the range still sends nothing we read. The size comes from ``Content-Range``,
  ``Content-Length`` or Hugging Face's ``X-Linked-Size``.
* Tokens go only to their own hosts and only as ``Authorization: Bearer`` headers (``HF_TOKEN`` to
  huggingface.co/hf.co, ``CIVITAI_TOKEN`` to civitai.com), never in a URL. httpx drops the header when
  a redirect leaves the origin, so CDNs never see it.
* A node repository is probed like ``git ls-remote``: ``GET <repo>/info/refs?service=git-upload-pack``
  (git's smart-HTTP ref advertisement). Its ``requirements.txt`` is read raw at the pinned ref:
  ``github.com/<o>/<r>`` -> ``https://raw.githubusercontent.com/<o>/<r>/<ref>/requirements.txt``,
  ``gitlab.com/<o>/<r>`` -> ``<repo>/-/raw/<ref>/requirements.txt``, any other host ->
  ``<repo>/raw/<ref>/requirements.txt`` (Gitea/Forgejo). ``<ref>`` is the pinned ref's commit when the
  advertisement resolved it, else ``HEAD``.
* ``UrlMap`` sends requests for an origin elsewhere (tests and the rehearsal point huggingface.co,
  github.com ... at loopback) while names, hosts and token choice keep the original URL.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import httpx

from bot.clock import Clock, SystemClock

CACHE_TTL_S = 300.0
MAX_REDIRECTS = 10
USER_AGENT = "vastops-preflight"
HF_HOSTS = ("huggingface.co", "hf.co")
CIVITAI_HOSTS = ("civitai.com",)
T = TypeVar("T")


def _host_matches(host: str, domains: tuple[str, ...]) -> bool:
    return any(host == d or host.endswith("." + d) for d in domains)


def is_hf(url: str) -> bool:
    return _host_matches((urlsplit(url).hostname or "").lower(), HF_HOSTS)


def is_civitai(url: str) -> bool:
    return _host_matches((urlsplit(url).hostname or "").lower(), CIVITAI_HOSTS)


def token_setting(url: str) -> str | None:
    """Which token setting applies to ``url``'s host (the script's ``auth_header`` rule)."""
    if is_hf(url):
        return "HF_TOKEN"
    if is_civitai(url):
        return "CIVITAI_TOKEN"
    return None


def fingerprint(token: str | None) -> str:
    """A cache key part that changes with the token without holding it."""
    return hashlib.sha256(token.encode()).hexdigest()[:12] if token else "-"


class ProbeCache:
    """Results per key for ``ttl`` seconds of the injected clock; concurrent askers share one probe."""

    def __init__(self, clock: Clock | None = None, ttl: float = CACHE_TTL_S) -> None:
        self.clock = clock or SystemClock()
        self.ttl = ttl
        self._done: dict[tuple[str, ...], tuple[float, Any]] = {}
        self._running: dict[tuple[str, ...], asyncio.Future[Any]] = {}
        self.misses = 0

    async def get(self, key: tuple[str, ...], make: Callable[[], Awaitable[T]],
                  keep: Callable[[T], bool] = lambda _: True) -> T:
        """``make()``'s value for ``key``, stored for ``ttl`` unless ``keep(value)`` is False."""
        now = self.clock.now()
        hit = self._done.get(key)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]  # type: ignore[no-any-return]
        running = self._running.get(key)
        if running is not None:
            return await asyncio.shield(running)
        self.misses += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._running[key] = future
        try:
            value = await make()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            self._running.pop(key, None)
        future.set_result(value)
        if keep(value):
            self._done[key] = (self.clock.now(), value)
        if len(self._done) > 512:  # bounded: drop the expired ones
            self._done = {k: v for k, v in self._done.items() if now - v[0] < self.ttl}
        return value


# Shared by every preflight of this process that brings no cache of its own: /rent, the approval
# request and the click then probe each model and node URL once per few minutes, not three times.
_DEFAULT_CACHE: ProbeCache | None = None


def default_cache() -> ProbeCache:
    global _DEFAULT_CACHE
    if _DEFAULT_CACHE is None:
        _DEFAULT_CACHE = ProbeCache()
    return _DEFAULT_CACHE


@dataclass(frozen=True)
class UrlMap:
    """Where requests for an origin really go: ``{"https://huggingface.co": "http://127.0.0.1:8123/hf"}``."""

    bases: Mapping[str, str] = field(default_factory=dict)

    def target(self, url: str) -> str:
        for origin, base in self.bases.items():
            origin = origin.rstrip("/")
            if url == origin or url.startswith(origin + "/") or url.startswith(origin + "?"):
                return base.rstrip("/") + url[len(origin):]
        return url


@dataclass(frozen=True)
class HttpFacts:
    """What a URL answered. ``error`` is set (and ``status`` None) when no answer came."""

    status: int | None
    size: int | None = None
    final_host: str = ""
    content_type: str = ""
    error_code: str = ""  # Hugging Face's X-Error-Code (GatedRepo, RepoNotFound, EntryNotFound, ...)
    error_message: str = ""
    error: str | None = None
    timed_out: bool = False


def _net_error(exc: httpx.HTTPError, timeout_s: float) -> tuple[str, bool]:
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within {timeout_s:g}s", True
    if isinstance(exc, httpx.TooManyRedirects):
        return "too many redirects", False
    if isinstance(exc, httpx.ConnectError):
        return "could not connect", False
    return type(exc).__name__, False


def _size_of(headers: httpx.Headers, status: int) -> int | None:
    total = re.fullmatch(r"bytes\s+(?:\d+-\d+|\*)/(\d+)", headers.get("content-range", "").strip())
    if total:
        return int(total[1])
    for name in ("x-linked-size", "content-length"):
        value = headers.get(name, "")
        if value.isdigit() and (status == 200 or name == "x-linked-size"):
            return int(value)
    return None


def _headers(token: str | None, **extra: str) -> dict[str, str]:
    headers = {"User-Agent": USER_AGENT, **extra}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


async def probe_url(client: httpx.AsyncClient, url: str, *, token: str | None, timeout_s: float,
                    urls: UrlMap) -> HttpFacts:
    """A 1-byte ranged GET of ``url`` (redirects followed, headers only)."""
    request = client.build_request("GET", urls.target(url), headers=_headers(token, Range="bytes=0-0"),
                                   timeout=timeout_s)
    try:
        resp = await client.send(request, stream=True, follow_redirects=True)
    except httpx.HTTPError as exc:
        why, timed_out = _net_error(exc, timeout_s)
        return HttpFacts(None, error=why, timed_out=timed_out)
    try:
        first = resp.history[0] if resp.history else resp
        return HttpFacts(
            status=resp.status_code,
            size=_size_of(resp.headers, resp.status_code) or _size_of(first.headers, 0),
            final_host=resp.url.host or "",
            content_type=resp.headers.get("content-type", "").split(";", 1)[0].strip().lower(),
            error_code=resp.headers.get("x-error-code", "") or first.headers.get("x-error-code", ""),
            error_message=(resp.headers.get("x-error-message", "") or first.headers.get("x-error-message", ""))[:200],
        )
    finally:
        await resp.aclose()


async def get_small(client: httpx.AsyncClient, url: str, *, token: str | None, timeout_s: float,
                    urls: UrlMap, limit: int = 256 * 1024, accept: str = "*/*") -> tuple[int | None, bytes, str]:
    """GET ``url`` reading at most ``limit`` bytes: (status or None, body, error text)."""
    try:
        async with client.stream("GET", urls.target(url), headers=_headers(token, Accept=accept),
                                 timeout=timeout_s, follow_redirects=True) as resp:
            body = b""
            async for chunk in resp.aiter_bytes():
                body += chunk
                if len(body) >= limit:
                    break
            return resp.status_code, body[:limit], ""
    except httpx.HTTPError as exc:
        return None, b"", _net_error(exc, timeout_s)[0]


# ----------------------------------------------------------------------------- Hugging Face


def hf_repo(url: str) -> str | None:
    """``org/name`` of a huggingface.co ``.../resolve/...`` URL (``datasets/org/name`` for datasets)."""
    parts = [p for p in urlsplit(url).path.split("/") if p]
    if len(parts) >= 4 and parts[0] in ("datasets", "spaces") and "resolve" in parts:
        return "/".join(parts[:3])
    if len(parts) >= 3 and "resolve" in parts[2:3]:
        return "/".join(parts[:2])
    return None


async def hf_token_valid(client: httpx.AsyncClient, token: str, *, timeout_s: float, urls: UrlMap) -> bool | None:
    """Does the Hub accept the token (``/api/whoami-v2``)? None when it could not be asked."""
    status, _, _ = await get_small(client, "https://huggingface.co/api/whoami-v2", token=token,
                                   timeout_s=timeout_s, urls=urls, limit=16 * 1024)
    if status in (401, 403):
        return False
    return True if status == 200 else None


async def hf_gated(client: httpx.AsyncClient, repo: str, *, token: str | None, timeout_s: float,
                   urls: UrlMap) -> bool | None:
    """Does the Hub's model API say ``repo`` is gated? None when it could not say."""
    kind = "models"
    name = repo
    if repo.startswith(("datasets/", "spaces/")):
        kind, name = repo.split("/", 1)
    status, body, _ = await get_small(client, f"https://huggingface.co/api/{kind}/{quote(name)}", token=token,
                                      timeout_s=timeout_s, urls=urls, limit=512 * 1024,
                                      accept="application/json")
    if status != 200:
        return None
    match = re.search(rb'"gated"\s*:\s*("(?:auto|manual)"|true|false)', body)
    if match is None:
        return None
    return match[1] != b"false"


# ----------------------------------------------------------------------------- git repositories


@dataclass(frozen=True)
class RepoFacts:
    """A repository's smart-HTTP ref advertisement. ``refs``: name -> commit; ``head``: HEAD's commit."""

    status: int | None
    refs: dict[str, str] = field(default_factory=dict)
    head: str | None = None
    error: str | None = None
    timed_out: bool = False
    smart: bool = True  # False: the server answered but not with git's ref advertisement

    def resolve(self, ref: str | None) -> str | None:
        """The commit ``ref`` names (a branch, tag, full ref name or a commit id), None when unknown."""
        if ref is None:
            return self.head
        for name in (ref, f"refs/heads/{ref}", f"refs/tags/{ref}^{{}}", f"refs/tags/{ref}"):
            if name in self.refs:
                return self.refs[name]
        ref_lower = ref.lower()
        if re.fullmatch(r"[0-9a-f]{7,40}", ref_lower):
            for commit in self.refs.values():
                if commit.startswith(ref_lower):
                    return commit
        return None


def parse_pkt_lines(body: bytes) -> tuple[dict[str, str], str | None]:
    """Refs from git's ``info/refs`` pkt-line advertisement (and HEAD's commit)."""
    refs: dict[str, str] = {}
    pos = 0
    while pos + 4 <= len(body):
        try:
            size = int(body[pos:pos + 4], 16)
        except ValueError:
            break
        if size == 0:
            pos += 4
            continue
        if size < 4:
            break
        line = body[pos + 4:pos + size].split(b"\0", 1)[0].strip().decode("utf-8", "replace")
        pos += size
        if line.startswith("#"):
            continue
        commit, _, name = line.partition(" ")
        if re.fullmatch(r"[0-9a-f]{40}", commit) and name:
            refs[name] = commit
    return refs, refs.get("HEAD")


def repo_base(url: str) -> str:
    """The repository URL without a trailing slash or ``.git`` (the form raw URLs are built on)."""
    return url.rstrip("/").removesuffix(".git")


async def probe_repo(client: httpx.AsyncClient, url: str, *, timeout_s: float, urls: UrlMap) -> RepoFacts:
    """``git ls-remote`` over HTTPS: the repository's refs, or why there are none."""
    base = url.rstrip("/")
    status, body, error = await get_small(client, f"{base}/info/refs?service=git-upload-pack", token=None,
                                          timeout_s=timeout_s, urls=urls, limit=4 * 1024 * 1024)
    if status is None:
        return RepoFacts(None, error=error, timed_out=error.startswith("no answer"))
    if status != 200:
        return RepoFacts(status)
    refs, head = parse_pkt_lines(body)
    if not refs:
        return RepoFacts(status, smart=False)
    return RepoFacts(status, refs=refs, head=head)


def raw_requirements_url(url: str, ref: str) -> str:
    """Where ``requirements.txt`` of the repository at ``ref`` is served raw (see the module docstring)."""
    base = repo_base(url)
    parts = urlsplit(base)
    host = (parts.hostname or "").lower()
    path = parts.path.strip("/")
    if host in ("github.com", "www.github.com"):
        return f"https://raw.githubusercontent.com/{path}/{ref}/requirements.txt"
    if host == "gitlab.com":
        return f"{base}/-/raw/{ref}/requirements.txt"
    return f"{base}/raw/{ref}/requirements.txt"


# ----------------------------------------------------------------------------- requirements.txt

_TORCH_FAMILY = ("torch", "torchvision", "torchaudio")
_PINNING = re.compile(r"(===?|~=|<=?|\s@\s|@\s*https?://)")


def torch_risks(text: str) -> list[str]:
    """What in a ``requirements.txt`` would replace the image's CUDA torch, one phrase each."""
    risks: list[str] = []
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        lowered = line.lower()
        if lowered.startswith(("--extra-index-url", "--index-url", "-i ", "-f ", "--find-links")):
            if re.search(r"/whl/(nightly/)?cpu\b|download\.pytorch\.org/whl/?\s*$", lowered):
                risks.append(f"adds a CPU index ({line[:80]})")
            continue
        if lowered.startswith("-"):
            continue
        name = re.split(r"[\s<>=!~;\[@(]", lowered, maxsplit=1)[0].replace("_", "-")
        spec = lowered[len(name):]
        if name == "xformers":
            risks.append(f"installs xformers, which pins its own torch ({line[:60]})")
        elif name in _TORCH_FAMILY and _PINNING.search(spec.split(";", 1)[0]):
            risks.append(f"pins {line[:60]}")
        elif name in _TORCH_FAMILY and "+cpu" in spec:
            risks.append(f"asks for a CPU build ({line[:60]})")
    return risks
