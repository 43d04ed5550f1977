"""Pure parts of the SSH client (endpoint choice, error kinds, backoff, HTTP parsing) and the
simulated server's emulated commands, exercised with a plain asyncssh client."""

from __future__ import annotations

import asyncio
import errno
import random
import socket
from pathlib import Path
from types import SimpleNamespace

import asyncssh
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.clock import FakeClock
from bot.sim.sshd import SimSshServer
from bot.vast.models import Instance
from bot.watch.ssh import (
    HostKeyChanged,
    SshBackoff,
    SshEndpoint,
    SshFatal,
    SshTransient,
    as_ssh_error,
    candidate_endpoints,
    classify_ssh_error,
    endpoint_for,
    parse_http_response,
)
from tests.ssh.helpers import RawFactory, SimFactory

RUNNING = {
    "public_ipaddr": " 142.170.89.112\n",
    "ports": {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": "41022"}], "8188/tcp": [{"HostPort": "41188"}]},
    "ssh_host": "ssh5.vast.ai",
    "ssh_port": 18816,
}


def test_direct_endpoint_preferred_then_proxy_then_quirk() -> None:
    assert endpoint_for(RUNNING) == SshEndpoint("142.170.89.112", 41022, "direct")
    assert candidate_endpoints(RUNNING) == [
        SshEndpoint("142.170.89.112", 41022, "direct"),
        SshEndpoint("ssh5.vast.ai", 18816, "proxy"),
        SshEndpoint("ssh5.vast.ai", 18817, "proxy"),
    ]


@pytest.mark.parametrize(
    "ports",
    [None, {}, {"22/tcp": None}, {"22/tcp": []}, {"22/tcp": [{"HostPort": "junk"}]}, {"8188/tcp": [{}]}],
)
def test_proxy_when_no_direct_ssh_port(ports: object) -> None:
    inst = {**RUNNING, "ports": ports}
    assert endpoint_for(inst) == SshEndpoint("ssh5.vast.ai", 18816, "proxy")


def test_duck_typed_objects_and_odd_values() -> None:
    obj = SimpleNamespace(public_ipaddr="1.2.3.4", ports={"22/tcp": [{"HostPort": 40022}]},
                          ssh_host=None, ssh_port=None)
    assert endpoint_for(obj) == SshEndpoint("1.2.3.4", 40022, "direct")
    # Several bindings: the first usable one wins.
    obj.ports = {"22/tcp": [{"HostIp": "::", "HostPort": ""}, {"HostPort": "40023"}]}
    assert endpoint_for(obj) == SshEndpoint("1.2.3.4", 40023, "direct")
    # Direct port without an IP cannot be dialled; nothing at all gives None.
    assert endpoint_for({"ports": {"22/tcp": [{"HostPort": "1"}]}}) is None
    assert endpoint_for({}) is None
    assert endpoint_for({"ssh_host": "ssh1.vast.ai", "ssh_port": "16018"}) == SshEndpoint(
        "ssh1.vast.ai", 16018, "proxy"
    )
    assert candidate_endpoints({"ssh_host": "h", "ssh_port": 65535}) == [SshEndpoint("h", 65535, "proxy")]


def test_vast_instance_model_is_understood() -> None:
    inst = Instance.model_validate({"id": 30994895, **RUNNING})
    assert endpoint_for(inst) == SshEndpoint("142.170.89.112", 41022, "direct")
    loading = Instance.model_validate({"id": 1, "actual_status": "loading", "ssh_host": "ssh8.vast.ai",
                                       "ssh_port": 15234})
    assert endpoint_for(loading) == SshEndpoint("ssh8.vast.ai", 15234, "proxy")


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "refused"),
        (OSError(errno.ECONNREFUSED, "Connect call failed"), "refused"),
        (ConnectionResetError(errno.ECONNRESET, "kex_exchange_identification: reset by peer"), "reset"),
        (BrokenPipeError(), "reset"),
        (asyncssh.ConnectionLost("Connection lost"), "reset"),
        (asyncssh.SFTPNoConnection("Connection not open"), "reset"),
        (asyncio.IncompleteReadError(b"", 10), "reset"),
        (TimeoutError(), "timeout"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), "timeout"),
        (OSError(errno.ETIMEDOUT, "Connection timed out"), "timeout"),
        (asyncssh.PermissionDenied("Permission denied"), "auth"),
        (asyncssh.HostKeyNotVerifiable("Host key is not trusted"), "host_key_changed"),
        (HostKeyChanged("SHA256:a", "SHA256:b"), "host_key_changed"),
        (asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "Connection refused"), "refused"),
        (asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "no"), "other"),
        (socket.gaierror(-2, "Name or service not known"), "other"),
        (asyncssh.ProtocolError("bad packet"), "other"),
    ],
)
def test_classify_ssh_error(exc: BaseException, kind: str) -> None:
    assert classify_ssh_error(exc) == kind
    wrapped = as_ssh_error(exc, "ctx")
    assert isinstance(wrapped, SshFatal if kind in ("auth", "host_key_changed") else SshTransient)
    assert wrapped.kind == kind


def test_backoff_doubles_to_the_cap_and_resets() -> None:
    b = SshBackoff(FakeClock(), base=2, cap=30, jitter=0)
    assert [b.next_delay() for _ in range(7)] == [2, 4, 8, 16, 30, 30, 30]
    b.reset()
    assert b.next_delay() == 2


@given(st.integers(min_value=0, max_value=10_000), st.floats(min_value=0, max_value=0.9), st.integers())
def test_backoff_jitter_stays_within_bounds(attempts: int, jitter: float, seed: int) -> None:
    b = SshBackoff(FakeClock(), base=2, cap=30, jitter=jitter, rng=random.Random(seed))
    b.attempts = attempts
    raw = min(30.0, 2.0 * 2 ** min(attempts, 32))
    delay = b.next_delay()
    assert raw * (1 - jitter) - 1e-9 <= delay <= raw


async def test_backoff_wait_sleeps_on_the_clock() -> None:
    clock = FakeClock()
    b = SshBackoff(clock, base=2, cap=30, jitter=0.5, rng=random.Random(1))
    start = clock.now()
    task = asyncio.create_task(b.wait())
    await clock.advance(0.5)
    assert not task.done()  # at least base * (1 - jitter) = 1 s
    await clock.advance(2)
    slept = await task
    assert 1.0 <= slept <= 2.0 and clock.now() - start == pytest.approx(2.5)


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        SshBackoff(FakeClock(), base=0)
    with pytest.raises(ValueError):
        SshBackoff(FakeClock(), base=10, cap=5)
    with pytest.raises(ValueError):
        SshBackoff(FakeClock(), jitter=1)


def test_parse_http_response_variants() -> None:
    r = parse_http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\nx-a: 2\r\n\r\nokEXTRA")
    assert (r.status, r.body, r.headers["x-a"]) == (200, b"ok", "1, 2")
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n"
    assert parse_http_response(chunked).body == b"abcde"
    assert parse_http_response(b"HTTP/1.0 502 Bad Gateway\r\n\r\nupstream").body == b"upstream"
    for bad in (b"", b"SSH-2.0-OpenSSH\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort",
                b"HTTP/1.1 OK\r\n\r\n", b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"):
        with pytest.raises(ValueError):
            parse_http_response(bad)


# -- the simulated server's emulated commands ----------------------------------------------


async def test_sim_exec_commands(sim: SimSshServer, raw_connect: RawFactory, root: Path) -> None:
    (root / "workspace" / "provision_v3.log").write_bytes(b"12345")
    (root / "var" / "log" / "provisioning.log").write_bytes(b"1")
    conn = await raw_connect(sim)

    async def run(command: str) -> asyncssh.SSHCompletedProcess:
        return await conn.run(command, encoding=None)

    assert (await run("true")).exit_status == 0
    r = await run("stat -c %s /workspace/provision_v3.log")
    assert (r.exit_status, r.stdout) == (0, b"5\n")
    r = await run("stat -c %s /workspace/provision_core.log")
    assert r.exit_status == 1 and b"No such file" in r.stderr
    r = await run("ls -1 /workspace/*.log /var/log/*provision*.log")
    assert (r.exit_status, r.stdout) == (0, b"/workspace/provision_v3.log\n/var/log/provisioning.log\n")
    assert (await run("ls -1 /nothing/*.log")).exit_status == 2
    assert (await run("test -f /workspace/provision_v3.log")).exit_status == 0
    assert (await run("test -f /.provisioning_complete")).exit_status == 1
    assert (await run("cat /workspace/provision_v3.log")).stdout == b"12345"
    assert (await run("cat /../../etc/passwd")).exit_status == 1  # no escape from the root
    r = await run("rm -rf /")
    assert r.exit_status == 127 and b"not found" in r.stderr  # there is no shell behind it
    assert (await run("ls 'unbalanced")).exit_status == 2


async def test_sim_refuses_non_root_and_foreign_forwards(sim: SimSshServer, raw_connect: RawFactory) -> None:
    with pytest.raises(asyncssh.PermissionDenied):
        await raw_connect(sim, username="comfy")
    conn = await raw_connect(sim)
    with pytest.raises(asyncssh.ChannelOpenError) as err:
        await conn.open_connection("10.0.0.1", 80)
    assert err.value.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED
    with pytest.raises(asyncssh.ChannelOpenError) as err:
        await conn.open_connection("127.0.0.1", 9999)  # not mapped: as if nothing listens
    assert err.value.code == asyncssh.OPEN_CONNECT_FAILED


async def test_sim_stop_releases_the_port(make_sim: SimFactory, clock: FakeClock) -> None:
    srv = await make_sim(boot_delay=5)
    port = srv.port
    await srv.stop()  # stopped before boot: the watcher task must not start listening later
    await clock.advance(10)
    assert not srv.listening and clock.pending_sleepers == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # free again
