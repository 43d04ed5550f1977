"""Connecting to the simulated instance: boot refusals on the fake clock, TOFU host keys, auth."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncssh
import pytest

from bot.clock import FakeClock
from bot.sim.sshd import SimSshServer, make_client_key
from bot.watch.ssh import (
    HostKeyChanged,
    SshEndpoint,
    SshFatal,
    SshLogSession,
    SshTransient,
    classify_ssh_error,
    fingerprint,
)
from tests.ssh.helpers import SessionFactory, SimFactory


async def test_refused_until_boot_delay_passes_on_the_clock(make_sim: SimFactory, connect: SessionFactory,
                                                            clock: FakeClock) -> None:
    srv = await make_sim(boot_delay=90)
    for _ in range(2):
        with pytest.raises(SshTransient) as err:
            await connect(srv)
        assert err.value.kind == "refused"
        assert isinstance(err.value.__cause__, ConnectionRefusedError)
        assert classify_ssh_error(err.value.__cause__) == "refused"
        await clock.advance(44)  # 88 s of simulated boot: still not listening
    assert not srv.listening
    await clock.advance(2)
    await srv.wait_listening()
    s = await connect(srv)
    assert s.trusted_on_first_use
    assert srv.logins == 1


async def test_refuse_forever_never_listens(make_sim: SimFactory, connect: SessionFactory,
                                            clock: FakeClock) -> None:
    srv = await make_sim(refuse_forever=True)
    await clock.advance(10_000, step=1000)
    assert not srv.listening
    with pytest.raises(SshTransient) as err:
        await connect(srv)
    assert err.value.kind == "refused"


async def test_trust_on_first_use_then_same_key_accepted(sim: SimSshServer, connect: SessionFactory) -> None:
    first = await connect(sim, known_host_key=None)
    assert first.trusted_on_first_use
    assert first.host_key_fingerprint == sim.host_key.get_fingerprint("sha256")
    remembered = first.host_key
    assert remembered.startswith("ssh-ed25519 ")
    assert fingerprint(remembered) == first.host_key_fingerprint

    again = await connect(sim, known_host_key=remembered)
    assert not again.trusted_on_first_use
    assert again.host_key == remembered


async def test_rotated_host_key_raises_before_login(sim: SimSshServer, connect: SessionFactory) -> None:
    remembered = (await connect(sim)).host_key
    logins = sim.logins
    old_fp = sim.host_key.get_fingerprint("sha256")
    new_key = sim.rotate_host_key()

    with pytest.raises(HostKeyChanged) as err:
        await connect(sim, known_host_key=remembered)
    exc = err.value
    assert isinstance(exc, SshFatal) and exc.fatal
    assert exc.kind == "host_key_changed"
    assert (exc.expected_fp, exc.seen_fp) == (old_fp, new_key.get_fingerprint("sha256"))
    assert fingerprint(exc.seen_key) == exc.seen_fp
    assert isinstance(exc.__cause__, asyncssh.HostKeyNotVerifiable)
    # The key was checked before authenticating: the changed host never saw a login.
    assert sim.logins == logins
    # Whoever decides to accept the new key passes it back in, and it works.
    accepted = await connect(sim, known_host_key=exc.seen_key)
    assert accepted.host_key_fingerprint == exc.seen_fp


async def test_wrong_client_key_is_fatal_auth(
    sim: SimSshServer, connect: SessionFactory, tmp_path: Path
) -> None:
    other = tmp_path / "other" / "id_ed25519"
    make_client_key(other)
    with pytest.raises(SshFatal) as err:
        await connect(sim, key_path=other)
    assert err.value.kind == "auth"
    assert isinstance(err.value.__cause__, asyncssh.PermissionDenied)
    assert sim.logins == 0


async def test_only_root_may_log_in(sim: SimSshServer, connect: SessionFactory) -> None:
    with pytest.raises(SshFatal) as err:
        await connect(sim, username="ubuntu")
    assert err.value.kind == "auth"


async def test_missing_key_file_is_fatal_auth(
    sim: SimSshServer, connect: SessionFactory, tmp_path: Path
) -> None:
    with pytest.raises(SshFatal) as err:
        await connect(sim, key_path=tmp_path / "nope")
    assert err.value.kind == "auth"
    assert isinstance(err.value.__cause__, FileNotFoundError)


async def test_garbage_remembered_key_is_fatal(sim: SimSshServer, connect: SessionFactory) -> None:
    with pytest.raises(SshFatal) as err:
        await connect(sim, known_host_key="ssh-ed25519 not-base64!")
    assert err.value.kind == "host_key_changed"


async def test_dropped_connection_is_transient_reset(sim: SimSshServer, session: SshLogSession,
                                                     root: Path) -> None:
    (root / "workspace" / "a.log").write_bytes(b"x\n")
    assert (await session.read_new("/workspace/a.log", 0)).data == b"x\n"
    sim.disconnect_all()
    await session._conn.wait_closed()
    assert session.is_closed
    with pytest.raises(SshTransient) as err:
        await session.read_new("/workspace/a.log", 2)
    assert err.value.kind == "reset" and "closed" in str(err.value)


async def test_connect_timeout_is_transient_timeout(key_path: Path) -> None:
    # A listening socket that never answers the SSH banner: the client's own timeout fires.
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # hold the connection open without speaking SSH

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(SshTransient) as err:
            await SshLogSession.connect(SshEndpoint("127.0.0.1", port, "direct"), key_path=key_path,
                                        known_host_key=None, connect_timeout=0.3)
        assert err.value.kind == "timeout"
    finally:
        server.close()
        await server.wait_closed()


async def test_no_boot_delay_listens_when_start_returns(make_sim: SimFactory, connect: SessionFactory) -> None:
    srv = await make_sim(boot_delay=0)
    assert srv.listening
    assert (await connect(srv)).trusted_on_first_use
