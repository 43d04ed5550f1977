"""SSH access to a rented instance for the watch engine: which endpoint to dial, trust-on-first-use
host keys, an incremental log tail over SFTP (only new bytes cross the wire), discovery of the
logs that do exist, and ComfyUI's ``/system_stats`` probe through a direct-tcpip channel.

Every failure leaves the public methods as ``SshTransient`` (retry with backoff: refused, reset,
timeout, other) or ``SshFatal`` (auth, host key changed), with the original error as
``__cause__``. Retry policy and grace periods belong to the engine; this module only classifies.
"""

from __future__ import annotations

import asyncio
import errno
import fnmatch
import json
import random
import socket
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeAlias

import asyncssh

from bot.clock import Clock

SshErrorKind: TypeAlias = Literal["refused", "reset", "timeout", "auth", "host_key_changed", "other"]
FATAL_KINDS: frozenset[str] = frozenset({"auth", "host_key_changed"})

# Where provisioning logs tend to live: our own script, Vast's provisioner (clean and portal
# copies), ai-dock's /var/log/provisioning.log, and ad-hoc scripts writing next to /workspace.
DEFAULT_LOG_GLOBS: tuple[str, ...] = (
    "/workspace/*.log",
    "/workspace/*/*provision*.log",
    "/var/log/*provision*.log",
    "/var/log/portal/*.log",
)

COMFYUI_PORTS: tuple[int, ...] = (18188, 8188)
_MAX_HTTP_RESPONSE = 1 << 20


# -- errors ---------------------------------------------------------------------------------


class SshError(Exception):
    """Base of every error this module raises; ``kind`` says what went wrong."""

    def __init__(self, kind: SshErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: SshErrorKind = kind

    @property
    def fatal(self) -> bool:
        return self.kind in FATAL_KINDS


class SshTransient(SshError):
    """Expected while a host boots or the network hiccups: retry with backoff."""


class SshFatal(SshError):
    """Retrying unchanged will not help (wrong key, host key changed): report it."""


class HostKeyChanged(SshFatal):
    """The instance presented a different host key than the one remembered for it."""

    def __init__(self, expected_fp: str, seen_fp: str, seen_key: str = "") -> None:
        super().__init__(
            "host_key_changed", f"host key changed: remembered {expected_fp}, server presented {seen_fp}"
        )
        self.expected_fp = expected_fp
        self.seen_fp = seen_fp
        self.seen_key = seen_key  # OpenSSH format, so an operator can choose to accept it


class HttpProbeFailed(SshTransient):
    """An HTTP request through the tunnel got no usable answer (port closed, hung, garbage).

    The SSH connection itself is fine; ``check_comfyui`` turns this into a not-ok result.
    """


_RESET_ERRNOS = {errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE}
_TIMEOUT_ERRNOS = {errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN}


def classify_ssh_error(exc: BaseException) -> SshErrorKind:
    """Name the kind of an SSH/socket failure (see ``SshErrorKind``)."""
    if isinstance(exc, SshError):
        return exc.kind
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return "host_key_changed"
    if isinstance(exc, asyncssh.PermissionDenied | asyncssh.KeyImportError):
        return "auth"
    if isinstance(exc, asyncssh.ConnectionLost | asyncssh.SFTPNoConnection | asyncssh.SFTPConnectionLost):
        return "reset"
    if isinstance(exc, asyncssh.ChannelOpenError):
        return "refused" if exc.code == asyncssh.OPEN_CONNECT_FAILED else "other"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError | ConnectionAbortedError | BrokenPipeError):
        return "reset"
    if isinstance(exc, asyncio.IncompleteReadError | EOFError):
        return "reset"
    if isinstance(exc, socket.gaierror):
        return "other"
    if isinstance(exc, OSError) and exc.errno is not None:
        if exc.errno == errno.ECONNREFUSED:
            return "refused"
        if exc.errno in _RESET_ERRNOS:
            return "reset"
        if exc.errno in _TIMEOUT_ERRNOS:
            return "timeout"
    return "other"


def as_ssh_error(exc: BaseException, context: str) -> SshError:
    """Wrap ``exc`` as ``SshTransient`` or ``SshFatal`` (the caller raises it ``from exc``)."""
    if isinstance(exc, SshError):
        return exc
    kind = classify_ssh_error(exc)
    detail = str(exc) or type(exc).__name__
    cls = SshFatal if kind in FATAL_KINDS else SshTransient
    return cls(kind, f"{context}: {kind}: {detail}")


_WRAPPED = (asyncssh.Error, OSError, TimeoutError, EOFError, asyncio.IncompleteReadError)


# -- backoff --------------------------------------------------------------------------------


class SshBackoff:
    """Exponential backoff with jitter for reconnects: base, 2*base, 4*base ... capped at ``cap``.

    Jitter shortens each delay by up to ``jitter`` (a fraction) so many watches do not reconnect
    in lockstep; the delay never exceeds ``cap``. ``wait()`` sleeps on the injected clock.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        base: float = 2.0,
        cap: float = 30.0,
        jitter: float = 0.2,
        rng: random.Random | None = None,
    ) -> None:
        if base <= 0 or cap < base or not 0 <= jitter < 1:
            raise ValueError("need 0 < base <= cap and 0 <= jitter < 1")
        self._clock = clock
        self.base = base
        self.cap = cap
        self.jitter = jitter
        self._rng = rng or random.Random()
        self.attempts = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; counts the attempt."""
        raw: float = min(self.cap, self.base * 2 ** min(self.attempts, 32))
        self.attempts += 1
        return raw * (1 - self.jitter * self._rng.random())

    async def wait(self) -> float:
        """Sleep for ``next_delay()`` on the clock and return the delay slept."""
        delay = self.next_delay()
        await self._clock.sleep(delay)
        return delay

    def reset(self) -> None:
        """Start again from ``base`` (after a successful connection)."""
        self.attempts = 0


# -- endpoints ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SshEndpoint:
    """Where to dial: the host's own IP and mapped port ("direct") or Vast's SSH proxy."""

    host: str
    port: int
    kind: Literal["direct", "proxy"]

    def __str__(self) -> str:
        return f"{self.host}:{self.port} ({self.kind})"


def _field(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _as_port(value: Any) -> int | None:
    try:
        port = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return port if 0 < port < 65536 else None


def _direct_ssh_port(ports: Any) -> int | None:
    if not isinstance(ports, Mapping):
        return None
    bindings = ports.get("22/tcp")
    if not bindings:
        return None
    if isinstance(bindings, Mapping) or not isinstance(bindings, Iterable):
        bindings = [bindings]
    for binding in bindings:
        value = _field(binding, "HostPort")
        if value is None:
            value = _field(binding, "host_port")
        if (port := _as_port(value)) is not None:
            return port
    return None


def candidate_endpoints(instance: Any) -> list[SshEndpoint]:
    """Every endpoint worth trying, best first: direct, proxy, then proxy port + 1.

    ``instance`` is a Mapping or an object with ``public_ipaddr``, ``ports``, ``ssh_host`` and
    ``ssh_port`` (the Vast API's instance fields). The proxy ``+1`` is the CLI's jupyter-runtype
    quirk, which is sometimes one too high, hence last.
    """
    out: list[SshEndpoint] = []
    ip = str(_field(instance, "public_ipaddr") or "").strip()
    direct = _direct_ssh_port(_field(instance, "ports"))
    if ip and direct is not None:
        out.append(SshEndpoint(ip, direct, "direct"))
    proxy_host = str(_field(instance, "ssh_host") or "").strip()
    proxy_port = _as_port(_field(instance, "ssh_port"))
    if proxy_host and proxy_port is not None:
        out.append(SshEndpoint(proxy_host, proxy_port, "proxy"))
        if proxy_port < 65535:
            out.append(SshEndpoint(proxy_host, proxy_port + 1, "proxy"))
    return out


def endpoint_for(instance: Any) -> SshEndpoint | None:
    """The preferred endpoint (direct if ``ports["22/tcp"]`` is mapped, else proxy), or None."""
    found = candidate_endpoints(instance)
    return found[0] if found else None


# -- host keys ------------------------------------------------------------------------------


def fingerprint(key: str | asyncssh.SSHKey) -> str:
    """SHA256 fingerprint (``SHA256:...``) of an OpenSSH public key string or key object."""
    if isinstance(key, str):
        key = asyncssh.import_public_key(key)
    return key.get_fingerprint("sha256")


def _openssh(key: asyncssh.SSHKey) -> str:
    # Drop the comment: it is not part of the key and should not make two equal keys differ.
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


class _TofuClient(asyncssh.SSHClient):
    """Accepts the server's key if none is remembered, or if it matches the remembered one."""

    def __init__(self, expected: asyncssh.SSHKey | None) -> None:
        self.expected = expected
        self.seen: asyncssh.SSHKey | None = None

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        self.seen = key
        return self.expected is None or key.public_data == self.expected.public_data


# -- results --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TailChunk:
    """What one poll read: the new bytes and where the next poll starts.

    ``rotated``: the file was shorter than the offset, so it was read again from 0.
    ``missing``: no file at that path (``new_offset`` is the offset passed in).
    ``size``: the file's size when read. ``data`` is raw bytes: a trailing partial line is
    included and line assembly is the caller's job.
    """

    data: bytes
    new_offset: int
    rotated: bool
    size: int
    missing: bool

    @property
    def behind(self) -> int:
        """Bytes still unread after this chunk (when capped by ``max_bytes``)."""
        return max(0, self.size - self.new_offset)


@dataclass(frozen=True, slots=True)
class LogCandidate:
    """A log file found on the instance."""

    path: str
    size: int
    mtime: float | None


class HttpResponse(NamedTuple):
    status: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes


@dataclass(frozen=True, slots=True)
class ComfyCheck:
    """Outcome of the ``/system_stats`` readiness check."""

    ok: bool
    status: int | None  # HTTP status of the most telling attempt, None if nothing answered
    detail: str
    port: int | None = None  # the port that answered ok
    stats: dict[str, Any] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class ComfyActivity:
    """What ComfyUI is doing, from ``/queue`` and ``/history?max_items=1`` (None fields: unread)."""

    ok: bool
    running: int = 0
    pending: int = 0
    last_prompt: str | None = None  # id of the newest prompt in the history
    detail: str = ""

    @property
    def busy(self) -> bool:
        return self.running > 0 or self.pending > 0


def best_alternative_log(configured_path: str, candidates: Sequence[LogCandidate]) -> LogCandidate | None:
    """The log most likely written instead of ``configured_path`` (provision-named, newest, biggest)."""
    others = [c for c in candidates if c.path != configured_path and c.size > 0]
    if not others:
        return None
    return max(
        others, key=lambda c: ("provision" in c.path.rsplit("/", 1)[-1].lower(), c.mtime or 0.0, c.size)
    )


def parse_http_response(raw: bytes) -> HttpResponse:
    """Parse a complete HTTP/1.x response (read until the server closed); ValueError if malformed."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError("no end of headers")
    lines = head.decode("iso-8859-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ValueError(f"bad status line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            raise ValueError(f"bad header line {line[:80]!r}")
        key = name.strip().lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _dechunk(rest)
    elif (length := headers.get("content-length", "").strip()).isdigit():
        if len(rest) < int(length):
            raise ValueError("body shorter than Content-Length")
        body = rest[: int(length)]
    else:
        body = rest
    return HttpResponse(int(parts[1]), headers, body)


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    pos = 0
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            raise ValueError("truncated chunked body")
        size = int(data[pos:eol].split(b";", 1)[0].strip() or b"x", 16)
        if size == 0:
            return bytes(out)
        start = eol + 2
        if len(data) < start + size:
            raise ValueError("truncated chunk")
        out += data[start : start + size]
        pos = start + size + 2


def _is_regular(attrs: asyncssh.SFTPAttrs | None) -> bool:
    return attrs is not None and attrs.permissions is not None and stat.S_ISREG(attrs.permissions)


def _is_link(attrs: asyncssh.SFTPAttrs | None) -> bool:
    return attrs is not None and attrs.permissions is not None and stat.S_ISLNK(attrs.permissions)


def _join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


# -- the session ----------------------------------------------------------------------------


class SshLogSession:
    """One SSH connection to one instance, used to tail its log and probe ComfyUI.

    Build it with ``await SshLogSession.connect(...)``; persist ``host_key`` for the instance
    and pass it back as ``known_host_key`` next time.
    """

    def __init__(
        self,
        conn: asyncssh.SSHClientConnection,
        endpoint: SshEndpoint,
        host_key: asyncssh.SSHKey,
        *,
        trusted_on_first_use: bool,
        op_timeout: float,
    ) -> None:
        self._conn = conn
        self.endpoint = endpoint
        self._host_key = host_key
        self.trusted_on_first_use = trusted_on_first_use
        self._op_timeout = op_timeout
        self._sftp: asyncssh.SFTPClient | None = None
        self._sftp_lock = asyncio.Lock()

    @classmethod
    async def connect(
        cls,
        endpoint: SshEndpoint,
        *,
        key_path: Path | None,
        known_host_key: str | None,
        connect_timeout: float = 15.0,
        op_timeout: float = 20.0,
        username: str = "root",
        keepalive_interval: float = 30.0,
    ) -> SshLogSession:
        """Connect and authenticate with the private key at ``key_path``.

        ``known_host_key`` is the key remembered for this instance (OpenSSH public key format)
        or None to trust whatever the server presents now. A different key raises
        ``HostKeyChanged`` before authenticating. Timeouts here are real (socket) time.
        """
        if key_path is None:
            raise SshFatal("auth", "cannot load SSH key: SSH_KEY_PATH is not set")
        try:
            client_key = asyncssh.read_private_key(str(key_path))
        except (OSError, asyncssh.KeyImportError, ValueError) as exc:
            raise SshFatal("auth", f"cannot load SSH key {key_path}: {exc}") from exc
        expected: asyncssh.SSHKey | None = None
        if known_host_key:
            try:
                expected = asyncssh.import_public_key(known_host_key)
            except (asyncssh.KeyImportError, ValueError) as exc:
                raise SshFatal(
                    "host_key_changed", f"remembered host key is unreadable: {known_host_key[:40]!r}"
                ) from exc
        client = _TofuClient(expected)
        try:
            conn = await asyncssh.connect(
                endpoint.host,
                endpoint.port,
                username=username,
                client_factory=lambda: client,
                client_keys=[client_key],
                # Empty (not None) trust lists make asyncssh ask _TofuClient about every key;
                # None would accept anything, () would read ~/.ssh/known_hosts.
                known_hosts=([], [], []),
                config=None,
                agent_path=None,
                gss_host=None,
                x509_trusted_certs=None,
                preferred_auth="publickey",
                connect_timeout=connect_timeout,
                keepalive_interval=keepalive_interval,
                keepalive_count_max=3,
            )
        except asyncssh.HostKeyNotVerifiable as exc:
            if expected is not None and client.seen is not None:
                seen = client.seen
                raise HostKeyChanged(fingerprint(expected), fingerprint(seen), _openssh(seen)) from exc
            raise as_ssh_error(exc, f"connect {endpoint}") from exc
        except _WRAPPED as exc:
            raise as_ssh_error(exc, f"connect {endpoint}") from exc
        presented = client.seen or conn.get_server_host_key()
        if presented is None:  # pragma: no cover - asyncssh always validates a plain host key
            conn.close()
            raise SshFatal("host_key_changed", f"connect {endpoint}: server presented no host key")
        return cls(conn, endpoint, presented, trusted_on_first_use=expected is None, op_timeout=op_timeout)

    # -- identity ----------------------------------------------------------------------------

    @property
    def host_key(self) -> str:
        """The server's host key in OpenSSH format: persist it for this instance."""
        return _openssh(self._host_key)

    @property
    def host_key_fingerprint(self) -> str:
        return fingerprint(self._host_key)

    @property
    def is_closed(self) -> bool:
        return self._conn.is_closed()

    # -- plumbing ----------------------------------------------------------------------------

    def _require_open(self, what: str) -> None:
        # A closed connection would otherwise surface as a channel-open failure ("refused").
        if self._conn.is_closed():
            raise SshTransient("reset", f"{what}: SSH connection to {self.endpoint} is closed")

    async def _sftp_client(self) -> asyncssh.SFTPClient:
        self._require_open("sftp")
        async with self._sftp_lock:
            if self._sftp is None:
                try:
                    async with asyncio.timeout(self._op_timeout):
                        # "replace": an odd file name in a listing must not break the listing.
                        self._sftp = await self._conn.start_sftp_client(path_errors="replace")
                except _WRAPPED as exc:
                    raise as_ssh_error(exc, f"sftp {self.endpoint}") from exc
            return self._sftp

    # -- log tail ----------------------------------------------------------------------------

    async def read_new(self, path: str, offset: int, *, max_bytes: int = 1 << 20) -> TailChunk:
        """Read the bytes of ``path`` after ``offset`` (at most ``max_bytes``).

        The file is opened once and its size taken from the open handle, so the size and the
        bytes describe the same file even if it is replaced meanwhile. Only the requested
        range is transferred.
        """
        if offset < 0 or max_bytes <= 0:
            raise ValueError("offset must be >= 0 and max_bytes > 0")
        sftp = await self._sftp_client()
        try:
            async with asyncio.timeout(self._op_timeout):
                try:
                    handle = await sftp.open(path, "rb")
                except (asyncssh.SFTPNoSuchFile, asyncssh.SFTPNoSuchPath):
                    return TailChunk(b"", offset, rotated=False, size=0, missing=True)
                try:
                    attrs = await handle.stat()
                    if attrs.size is None:
                        # No size from the server: read forward and trust the offset.
                        data: bytes = await handle.read(max_bytes, offset)
                        return TailChunk(data, offset + len(data), False, offset + len(data), False)
                    size = attrs.size
                    rotated = size < offset
                    start = 0 if rotated else offset
                    want = min(size - start, max_bytes)
                    data = await handle.read(want, start) if want > 0 else b""
                finally:
                    await handle.close()
        except _WRAPPED as exc:
            raise as_ssh_error(exc, f"read {path}") from exc
        return TailChunk(data, start + len(data), rotated=rotated, size=size, missing=False)

    async def exists(self, path: str) -> bool:
        """Whether ``path`` exists (marker files such as ``/.provisioning_complete``)."""
        sftp = await self._sftp_client()
        try:
            async with asyncio.timeout(self._op_timeout):
                return bool(await sftp.exists(path))
        except _WRAPPED as exc:
            raise as_ssh_error(exc, f"exists {path}") from exc

    async def list_candidate_logs(self, patterns: Sequence[str] = DEFAULT_LOG_GLOBS) -> list[LogCandidate]:
        """Regular files matching ``patterns`` (``*``/``?``/``[]`` per path component), by path."""
        sftp = await self._sftp_client()
        cache: dict[str, list[asyncssh.SFTPName]] = {}
        found: dict[str, LogCandidate] = {}
        try:
            async with asyncio.timeout(self._op_timeout):
                for pattern in patterns:
                    for path, attrs in await self._glob(sftp, pattern, cache):
                        found[path] = LogCandidate(path, attrs.size or 0, attrs.mtime)
        except _WRAPPED as exc:
            raise as_ssh_error(exc, "list logs") from exc
        return [found[p] for p in sorted(found)]

    async def _glob(
        self, sftp: asyncssh.SFTPClient, pattern: str, cache: dict[str, list[asyncssh.SFTPName]]
    ) -> list[tuple[str, asyncssh.SFTPAttrs]]:
        parts = [p for p in pattern.split("/") if p]
        bases = ["/"]
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if not any(ch in part for ch in "*?["):
                if not last:
                    bases = [_join(b, part) for b in bases]
                    continue
                out = []
                for b in bases:
                    attrs = await self._stat_or_none(sftp, _join(b, part))
                    if _is_regular(attrs):
                        out.append((_join(b, part), attrs))
                return out  # type: ignore[return-value]
            matched: list[tuple[str, asyncssh.SFTPAttrs]] = []
            for b in bases:
                for entry in await self._readdir(sftp, b, cache):
                    name = str(entry.filename)
                    if name in (".", "..") or not fnmatch.fnmatchcase(name, part):
                        continue
                    attrs = entry.attrs
                    if _is_link(attrs):
                        attrs = await self._stat_or_none(sftp, _join(b, name)) or attrs
                    matched.append((_join(b, name), attrs))
            if last:
                return [(p, a) for p, a in matched if _is_regular(a)]
            bases = [p for p, a in matched if a.permissions is not None and stat.S_ISDIR(a.permissions)]
        return []

    @staticmethod
    async def _readdir(
        sftp: asyncssh.SFTPClient, path: str, cache: dict[str, list[asyncssh.SFTPName]]
    ) -> list[asyncssh.SFTPName]:
        if path not in cache:
            try:
                cache[path] = list(await sftp.readdir(path))
            except asyncssh.SFTPError:
                cache[path] = []  # missing or not a directory or unreadable: nothing there
        return cache[path]

    @staticmethod
    async def _stat_or_none(sftp: asyncssh.SFTPClient, path: str) -> asyncssh.SFTPAttrs | None:
        try:
            return await sftp.stat(path)
        except asyncssh.SFTPError:
            return None

    # -- HTTP through the tunnel -------------------------------------------------------------

    # A built-in timeout (not only the caller's asyncio.timeout) so no probe can hang a watch.
    async def http_get(
        self, port: int, path: str = "/", *, host: str = "127.0.0.1", timeout: float = 10.0  # noqa: ASYNC109
    ) -> HttpResponse:
        """GET ``http://host:port/path`` as seen from inside the instance (direct-tcpip channel).

        Raises ``HttpProbeFailed`` when nothing listens, the answer is not HTTP or it times
        out; ``SshTransient``/``SshFatal`` when the SSH connection itself fails.
        """
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: vastops\r\n"
            "Accept: application/json\r\nConnection: close\r\n\r\n"
        ).encode()
        self._require_open(f"http port {port}")
        raw = bytearray()
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await self._conn.open_connection(host, port)
                try:
                    writer.write(request)
                    while chunk := await reader.read(65536):
                        raw += chunk
                        if len(raw) > _MAX_HTTP_RESPONSE:
                            break
                finally:
                    writer.close()
        except asyncssh.ChannelOpenError as exc:
            raise HttpProbeFailed("refused", f"port {port}: nothing listening ({exc.reason})") from exc
        except TimeoutError as exc:
            raise HttpProbeFailed("timeout", f"port {port}: no answer within {timeout:g}s") from exc
        except _WRAPPED as exc:
            raise as_ssh_error(exc, f"http port {port}") from exc
        try:
            return parse_http_response(bytes(raw))
        except ValueError as exc:
            raise HttpProbeFailed("other", f"port {port}: not an HTTP answer ({exc})") from exc

    async def check_comfyui(
        self, ports: Sequence[int] = COMFYUI_PORTS, *, timeout: float = 10.0  # noqa: ASYNC109
    ) -> ComfyCheck:
        """Is ComfyUI really serving? HTTP 200 + JSON with ``devices`` on ``/system_stats``,
        and not Caddy's placeholder page. Tries ``ports`` in order; never raises for an
        unhealthy app, only for a broken SSH connection."""
        notes: list[str] = []
        status: int | None = None
        for port in ports:
            try:
                resp = await self.http_get(port, "/system_stats", timeout=timeout)
            except HttpProbeFailed as exc:
                notes.append(str(exc))
                continue
            if status is None or (status != 200 and resp.status == 200):
                status = resp.status
            verdict = _judge_system_stats(resp)
            if isinstance(verdict, dict):
                return ComfyCheck(True, resp.status, f"port {port}: {_describe(verdict)}", port, verdict)
            notes.append(f"port {port}: {verdict}")
        return ComfyCheck(False, status, "; ".join(notes) or "no ports to check")

    async def comfyui_activity(
        self, ports: Sequence[int] = COMFYUI_PORTS, *, timeout: float = 10.0  # noqa: ASYNC109
    ) -> ComfyActivity:
        """Is ComfyUI running or queueing a prompt, and which prompt ran last? Read from ``/queue``
        and ``/history?max_items=1`` through the tunnel; never raises for an unhealthy app, only
        for a broken SSH connection."""
        notes: list[str] = []
        for port in ports:
            try:
                queue = _json_object(await self.http_get(port, "/queue", timeout=timeout))
                if isinstance(queue, str):
                    notes.append(f"port {port} /queue: {queue}")
                    continue
                history = _json_object(await self.http_get(port, "/history?max_items=1", timeout=timeout))
            except HttpProbeFailed as exc:
                notes.append(str(exc))
                continue
            if isinstance(history, str):
                notes.append(f"port {port} /history: {history}")
                continue
            running, pending = queue.get("queue_running"), queue.get("queue_pending")
            if not isinstance(running, list) or not isinstance(pending, list):
                notes.append(f"port {port} /queue: no queue_running/queue_pending lists")
                continue
            # The history is in insertion order: the last key is the newest prompt.
            last = next(reversed(history), None) if history else None
            return ComfyActivity(True, len(running), len(pending), str(last) if last is not None else None,
                                 f"port {port}: {len(running)} running, {len(pending)} pending")
        return ComfyActivity(False, detail="; ".join(notes) or "no ports to check")

    # -- teardown ----------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the connection; never raises."""
        if self._sftp is not None:
            self._sftp.exit()
            self._sftp = None
        self._conn.close()
        try:
            async with asyncio.timeout(5):
                await self._conn.wait_closed()
        except (*_WRAPPED, asyncio.CancelledError):
            pass

    async def __aenter__(self) -> SshLogSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _judge_system_stats(resp: HttpResponse) -> dict[str, Any] | str:
    """The parsed stats if this is ComfyUI answering, else why not."""
    if resp.headers.get("x-portal-placeholder", "").strip().lower() == "true":
        return f"HTTP {resp.status} placeholder page (X-Portal-Placeholder), backend not up"
    if resp.status != 200:
        return f"HTTP {resp.status}"
    try:
        stats = json.loads(resp.body)
    except ValueError:
        return "HTTP 200 but not JSON"
    if not isinstance(stats, dict) or not isinstance(stats.get("devices"), list):
        return "HTTP 200 JSON without a devices list"
    return stats


def _json_object(resp: HttpResponse) -> dict[str, Any] | str:
    """The JSON object ComfyUI answered, or why it is not one."""
    if resp.headers.get("x-portal-placeholder", "").strip().lower() == "true" or resp.status != 200:
        return f"HTTP {resp.status}"
    try:
        body = json.loads(resp.body)
    except ValueError:
        return "HTTP 200 but not JSON"
    return body if isinstance(body, dict) else "HTTP 200 JSON but not an object"


def _describe(stats: dict[str, Any]) -> str:
    system = stats.get("system")
    if not isinstance(system, dict):
        system = {}
    version = system.get("comfyui_version") or "?"
    names = [str(d.get("name", "?")) for d in stats["devices"] if isinstance(d, dict)]
    return f"ComfyUI {version}, {len(names)} device(s): {', '.join(names) or 'none'}"
