"""ComfyUI's /system_stats check through a direct-tcpip channel to a fake ComfyUI (aiohttp)."""

from __future__ import annotations

import pytest

from bot.sim.sshd import SimSshServer
from bot.watch.ssh import HttpProbeFailed, SshLogSession, SshTransient
from tests.ssh.helpers import FakeComfy, SessionFactory, SimFactory


@pytest.fixture
async def tunnel(make_sim: SimFactory, comfy: FakeComfy, free_port: int,
                 connect: SessionFactory) -> SshLogSession:
    # 18188 is ComfyUI itself; 8188 (Caddy) maps to a port where nothing listens.
    srv = await make_sim(comfyui_port_map={18188: comfy.port, 8188: free_port})
    await srv.wait_listening()
    return await connect(srv)


async def test_ready_comfyui_is_ok(tunnel: SshLogSession, comfy: FakeComfy) -> None:
    check = await tunnel.check_comfyui()
    assert check.ok and check.status == 200 and check.port == 18188
    assert check.stats is not None and check.stats["system"]["comfyui_version"] == "0.3.40"
    assert "RTX 4090" in check.detail and "0.3.40" in check.detail
    assert comfy.hits == 1


async def test_placeholder_page_is_not_ready(tunnel: SshLogSession, comfy: FakeComfy) -> None:
    comfy.mode = "placeholder"
    check = await tunnel.check_comfyui(ports=(18188,))
    assert not check.ok and check.status == 200
    assert "placeholder" in check.detail.lower()


async def test_bad_gateway_is_not_ready(tunnel: SshLogSession, comfy: FakeComfy) -> None:
    comfy.mode = "502"
    check = await tunnel.check_comfyui()
    assert not check.ok and check.status == 502
    assert "HTTP 502" in check.detail and "nothing listening" in check.detail  # 8188 too


async def test_html_200_is_not_ready(tunnel: SshLogSession, comfy: FakeComfy) -> None:
    comfy.mode = "html"
    check = await tunnel.check_comfyui(ports=(18188,))
    assert not check.ok and "not JSON" in check.detail


async def test_nothing_listening_is_not_ready_and_does_not_raise(
    make_sim: SimFactory, connect: SessionFactory, free_port: int
) -> None:
    srv: SimSshServer = await make_sim(comfyui_port_map={18188: free_port})  # 8188 not mapped at all
    await srv.wait_listening()
    session = await connect(srv)
    check = await session.check_comfyui()
    assert not check.ok and check.status is None and check.port is None
    assert check.detail.count("nothing listening") == 2
    with pytest.raises(HttpProbeFailed) as err:
        await session.http_get(18188, "/system_stats")
    assert isinstance(err.value, SshTransient) and err.value.kind == "refused"


async def test_falls_back_to_the_second_port(make_sim: SimFactory, connect: SessionFactory,
                                             comfy: FakeComfy, free_port: int) -> None:
    srv = await make_sim(comfyui_port_map={18188: free_port, 8188: comfy.port})
    await srv.wait_listening()
    check = await (await connect(srv)).check_comfyui()
    assert check.ok and check.port == 8188


async def test_http_get_decodes_chunked_bodies(tunnel: SshLogSession, comfy: FakeComfy) -> None:
    comfy.mode = "chunked"
    resp = await tunnel.http_get(18188, "/system_stats")
    assert resp.status == 200 and "chunked" in resp.headers["transfer-encoding"]
    assert resp.body == b'{"system": {}, "devices": [{"name": "cpu"}]}'
    assert (await tunnel.check_comfyui(ports=(18188,))).ok


async def test_http_get_reports_404_with_headers(tunnel: SshLogSession) -> None:
    status, headers, body = await tunnel.http_get(18188, "/nope")
    assert status == 404 and headers["content-type"].startswith("text/plain") and b"Not Found" in body


async def test_closed_session_raises_instead_of_reporting_not_ready(tunnel: SshLogSession) -> None:
    await tunnel.close()
    with pytest.raises(SshTransient) as err:
        await tunnel.check_comfyui()
    assert not isinstance(err.value, HttpProbeFailed) and err.value.kind == "reset"


async def test_hung_comfyui_times_out_as_not_ready(tunnel: SshLogSession, comfy: FakeComfy) -> None:
    comfy.mode = "hang"
    check = await tunnel.check_comfyui(ports=(18188,), timeout=0.3)
    assert not check.ok and check.status is None and "no answer" in check.detail
    comfy.release.set()
    comfy.mode = "ok"
    assert (await tunnel.check_comfyui(ports=(18188,))).ok  # the SSH connection survived the timeout
