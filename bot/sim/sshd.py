"""A simulated Vast instance's sshd: a real asyncssh server on loopback that refuses connections
until a (simulated-clock) boot delay has passed, then serves root-only key login, SFTP chrooted to
a temp dir, a few exec commands emulated in Python, and direct-tcpip forwards to a fake ComfyUI.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import os
import shlex
import socket
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import asyncssh

from bot.clock import Clock

log = logging.getLogger(__name__)

KeyArg = asyncssh.SSHKey | str | Path


def make_client_key(path: Path) -> asyncssh.SSHKey:
    """Generate an ed25519 key, write it to ``path`` (0600) and ``path``.pub, and return it."""
    key = asyncssh.generate_private_key("ssh-ed25519", comment="vastops-test")
    path.parent.mkdir(parents=True, exist_ok=True)
    key.write_private_key(str(path))
    os.chmod(path, 0o600)
    key.write_public_key(str(path) + ".pub")
    return key


def _load_public_key(key: KeyArg) -> asyncssh.SSHKey:
    if isinstance(key, asyncssh.SSHKey):
        # A private key object works too: only its public half is compared.
        return asyncssh.import_public_key(key.export_public_key())
    if isinstance(key, Path):
        return asyncssh.read_public_key(str(key))
    return asyncssh.import_public_key(key)


class _Refused(Exception):
    """An emulated command failed: message for stderr plus an exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class _SimServer(asyncssh.SSHServer):
    """Per-connection policy: root only, one key, forwards only to mapped loopback ports."""

    def __init__(self, owner: SimSshServer) -> None:
        self._owner = owner
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._owner._connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._owner._connections.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return username == "root" and key.public_data == self._owner._authorized.public_data

    def auth_completed(self) -> None:
        # Counted here, not in validate_public_key: clients ask about a key before signing.
        self._owner.logins += 1

    # asyncssh's own forward_connection() answers with an SSHForwarder, a type its signature
    # for this method does not list.
    def connection_requested(  # type: ignore[override]
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> object:
        if dest_host not in ("127.0.0.1", "localhost") or self._conn is None:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, f"forwarding to {dest_host} not allowed"
            )
        local = self._owner.port_map.get(dest_port)
        if local is None:
            # Same answer a real host gives when nothing listens on that port.
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "Connection refused")
        return self._conn.forward_connection("127.0.0.1", local)

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return False


class SimSshServer:
    """One simulated instance's SSH daemon, serving files under ``root`` as the instance's ``/``.

    ``start()`` reserves the port at once (a bound socket that does not listen, so clients get
    ECONNREFUSED exactly as from a booting host) and starts listening once
    ``clock.now() >= t0 + boot_delay``. With ``refuse_forever`` it never listens.
    """

    def __init__(
        self,
        root: Path,
        *,
        authorized_key: KeyArg,
        host_key: asyncssh.SSHKey | None = None,
        clock: Clock,
        boot_delay: float = 0.0,
        refuse_forever: bool = False,
        comfyui_port_map: dict[int, int] | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self._authorized = _load_public_key(authorized_key)
        self._host_key = host_key or asyncssh.generate_private_key("ssh-ed25519")
        self._clock = clock
        self.boot_delay = boot_delay
        self.refuse_forever = refuse_forever
        self.port_map: dict[int, int] = dict(comfyui_port_map or {})
        self.logins = 0  # successful key logins, for tests and the demo
        self.port = 0
        self._sock: socket.socket | None = None
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._boot_task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._connections: set[asyncssh.SSHServerConnection] = set()
        self._t0 = 0.0

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Reserve ``host:port`` (0 = any free port) and return the port.

        Listening starts at once when ``boot_delay <= 0``, else once the clock passes it.
        """
        if self._sock is not None:
            raise RuntimeError("already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        # Bound but not listening: the kernel answers SYNs with RST, i.e. ECONNREFUSED.
        sock.setblocking(False)
        self._sock = sock
        self.port = sock.getsockname()[1]
        self._t0 = self._clock.now()
        if self.refuse_forever:
            return self.port
        if self.boot_delay <= 0:
            await self._listen()  # no boot to wait for: callers may connect as soon as this returns
        else:
            self._boot_task = asyncio.create_task(self._boot(), name=f"sim-sshd-boot:{self.port}")
        return self.port

    async def _boot(self) -> None:
        try:
            while (left := self._t0 + self.boot_delay - self._clock.now()) > 0:
                await self._clock.sleep(left)
            await self._listen()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("simulated sshd on port %s failed to start listening", self.port)

    async def _listen(self) -> None:
        assert self._sock is not None
        self._acceptor = await asyncssh.listen(
            sock=self._sock,
            server_factory=lambda: _SimServer(self),
            server_host_keys=[self._host_key],
            sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=str(self.root).encode()),
            process_factory=self._run_process,
            allow_scp=False,
            line_editor=False,
            encoding=None,
            config=None,
        )
        self._listening.set()

    async def wait_listening(self) -> None:
        """Return once the server accepts connections (tests await this instead of sleeping)."""
        await self._listening.wait()

    @property
    def listening(self) -> bool:
        return self._listening.is_set()

    def disconnect_all(self) -> None:
        """Drop every open session, as a container restart would (clients see a reset)."""
        for conn in list(self._connections):
            conn.abort()

    async def stop(self) -> None:
        """Stop listening, drop sessions and release the port."""
        if self._boot_task is not None:
            self._boot_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._boot_task
            self._boot_task = None
        self.disconnect_all()
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
            self._acceptor = None
        elif self._sock is not None:
            self._sock.close()
        self._sock = None
        self._listening.clear()

    async def __aenter__(self) -> SimSshServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- host key ----------------------------------------------------------------------------

    @property
    def host_key(self) -> asyncssh.SSHKey:
        return self._host_key

    @property
    def host_public_key(self) -> str:
        """The host key in OpenSSH public key format (what a client remembers)."""
        return self._host_key.export_public_key().decode().strip()

    def rotate_host_key(self) -> asyncssh.SSHKey:
        """Replace the host key (a reinstalled container); new connections see the new key."""
        self._host_key = asyncssh.generate_private_key("ssh-ed25519")
        if self._acceptor is not None:
            self._acceptor.update(server_host_keys=[self._host_key])
        return self._host_key

    # -- files -------------------------------------------------------------------------------

    def local_path(self, remote: str) -> Path:
        """Map an absolute instance path (``/workspace/x.log``) into ``root``, refusing escapes."""
        candidate = (self.root / remote.lstrip("/")).resolve()
        if candidate != self.root and self.root not in candidate.parents:
            raise ValueError(f"{remote}: outside the instance")
        return candidate

    # -- exec --------------------------------------------------------------------------------

    async def _run_process(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        command = process.command
        if command is None:
            process.stderr.write(b"interactive shells are not simulated\n")
            process.exit(1)
            return
        try:
            out = self._exec(command)
        except _Refused as exc:
            if str(exc):
                process.stderr.write(f"{exc}\n".encode())
            process.exit(exc.status)
            return
        process.stdout.write(out)
        process.exit(0)

    def _exec(self, command: str) -> bytes:
        """Emulate a handful of commands in Python; there is no shell behind this."""
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise _Refused(f"sh: {exc}", 2) from None
        if not argv:
            return b""
        handler = self._commands.get(argv[0])
        if handler is None:
            raise _Refused(f"sh: 1: {argv[0]}: not found", 127)
        try:
            return handler(self, argv[1:])
        except ValueError as exc:  # a path escaping the root
            raise _Refused(f"{argv[0]}: {exc}", 1) from None

    def _cmd_true(self, args: Sequence[str]) -> bytes:
        return b""

    def _cmd_stat(self, args: Sequence[str]) -> bytes:
        if len(args) < 3 or args[0] != "-c" or args[1] != "%s":
            raise _Refused("stat: only 'stat -c %s PATH...' is simulated", 1)
        out = []
        for remote in args[2:]:
            p = self.local_path(remote)
            if not p.exists():
                raise _Refused(f"stat: cannot statx '{remote}': No such file or directory", 1)
            out.append(f"{p.stat().st_size}\n")
        return "".join(out).encode()

    def _cmd_test(self, args: Sequence[str]) -> bytes:
        if len(args) != 2 or args[0] not in ("-e", "-f", "-d"):
            raise _Refused("test: only -e/-f/-d PATH is simulated", 2)
        p = self.local_path(args[1])
        ok = {"-e": p.exists, "-f": p.is_file, "-d": p.is_dir}[args[0]]()
        if not ok:
            raise _Refused("", 1)
        return b""

    def _cmd_cat(self, args: Sequence[str]) -> bytes:
        out = b""
        for remote in args:
            p = self.local_path(remote)
            if not p.is_file():
                raise _Refused(f"cat: {remote}: No such file or directory", 1)
            out += p.read_bytes()
        return out

    def _cmd_ls(self, args: Sequence[str]) -> bytes:
        patterns = [a for a in args if not a.startswith("-")]
        found: list[str] = []
        for pattern in patterns:
            found.extend(self._glob(pattern))
        if not found:
            raise _Refused("ls: cannot access: No such file or directory", 2)
        return "".join(f"{p}\n" for p in found).encode()

    def _glob(self, pattern: str) -> list[str]:
        """Match an absolute glob against the instance tree, returning instance paths."""
        parts = [p for p in pattern.split("/") if p]
        matches = ["/"]
        for part in parts:
            nxt: list[str] = []
            for base in matches:
                local = self.local_path(base)
                if not local.is_dir():
                    continue
                names = sorted(os.listdir(local)) if any(c in part for c in "*?[") else [part]
                for name in names:
                    if fnmatch.fnmatchcase(name, part) and (local / name).exists():
                        nxt.append(base.rstrip("/") + "/" + name)
            matches = nxt
        return [m for m in matches if stat.S_ISREG(self.local_path(m).stat().st_mode)]

    _commands: ClassVar[dict[str, Callable[[SimSshServer, Sequence[str]], bytes]]] = {
        "true": _cmd_true,
        "stat": _cmd_stat,
        "test": _cmd_test,
        "cat": _cmd_cat,
        "ls": _cmd_ls,
    }
