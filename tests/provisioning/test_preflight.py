"""preflight() against a real HTTP server on 127.0.0.1: the audit's URL failures must each be caught."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from pathlib import Path

import httpx

from bot.provisioning.preflight import PreflightReport, preflight
from tests.provisioning.helpers import Route, WebServer, make_settings
from tests.provisioning.stubs import SCRIPT

GOOD = SCRIPT.read_bytes()
GOOD_SHA = hashlib.sha256(GOOD).hexdigest()
GIST_ID = "0123456789abcdef0123456789abcdef"
OLD_SCRIPT = b"#!/bin/bash\nLOG=/workspace/provision_v3.log\nexec >>$LOG 2>&1\necho provisioning\n"


async def check(tmp_path: Path, web: WebServer, url: str, **settings: object) -> PreflightReport:
    report = await preflight(make_settings(tmp_path, provision_script_url=url, **settings),
                             gist_api_base=web.base + "/api", request_timeout_s=5)
    text = report.render()
    # Phone-sized: every line short enough to read without scrolling sideways much.
    assert all(len(line) < 240 for line in text.splitlines()), text
    return report


def status(report: PreflightReport, name: str) -> str:
    found = report.get(name)
    assert found is not None, report.render()
    return found.status


def gist_api(web: WebServer, files: list[str], versions: list[str]) -> None:
    body = {"id": GIST_ID, "files": {n: {"filename": n} for n in files},
            "history": [{"version": v} for v in versions]}
    web.add(f"/api/gists/{GIST_ID}", json.dumps(body).encode(), Content_Type="application/json")


async def test_redirect_to_the_right_pinned_script_passes(tmp_path: Path, web: WebServer) -> None:
    web.add("/releases/v3/provision.sh", GOOD)
    url = web.redirect("/latest/provision.sh", "/releases/v3/provision.sh")
    report = await check(tmp_path, web, url, provision_script_sha256=GOOD_SHA)
    assert report.ok, report.render()
    assert [c.status for c in report.checks] == ["ok"] * len(report.checks), report.render()
    names = [c.name for c in report.checks]
    for name in ("URL secrets", "script download", "script body", "SHA-256", "log path", "events", "launch"):
        assert name in names
    assert "via 127.0.0.1" in report.get("script download").detail  # type: ignore[union-attr]
    assert report.render().startswith("Preflight passed")


async def test_404_fails(tmp_path: Path, web: WebServer) -> None:
    report = await check(tmp_path, web, web.base + "/scripts/provision.sh")
    assert not report.ok
    assert "HTTP 404" in report.get("script download").detail  # type: ignore[union-attr]
    assert report.render().startswith("Preflight FAILED")


async def test_commit_pinned_gist_url_warns(tmp_path: Path, web: WebServer) -> None:
    rev = "7aad3f7c0ffee0000000000000000000000000aa"
    url = web.add(f"/someone/{GIST_ID}/raw/{rev}/provision-reliable.sh", GOOD)
    report = await check(tmp_path, web, url, provision_script_sha256=GOOD_SHA)
    assert report.ok, report.render()
    pin = report.get("gist pin")
    assert pin is not None and pin.status == "warn"
    assert "go stale after force-push" in pin.fix and "pin a SHA-256" in pin.fix


async def test_wrong_gist_file_name_fails_naming_the_real_file(tmp_path: Path, web: WebServer) -> None:
    gist_api(web, ["provision-reliable.sh"], ["aa" * 20])
    report = await check(tmp_path, web, f"{web.base}/someone/{GIST_ID}/raw/gistfile1.txt")
    assert not report.ok
    failed = report.get("script download")
    assert failed is not None and failed.status == "fail"
    assert "no file gistfile1.txt" in failed.detail and "it has: provision-reliable.sh" in failed.detail
    assert ".../raw/provision-reliable.sh" in failed.fix
    assert f"/api/gists/{GIST_ID}" in web.requests


async def test_vanished_gist_revision_fails_with_the_reason(tmp_path: Path, web: WebServer) -> None:
    gist_api(web, ["provision-reliable.sh"], ["bb" * 20, "cc" * 20])
    report = await check(tmp_path, web, f"{web.base}/someone/{GIST_ID}/raw/7aad3f7/provision-reliable.sh")
    assert not report.ok
    failed = report.get("script download")
    assert failed is not None and "not in the gist's history" in failed.detail
    assert status(report, "gist pin") == "warn"


async def test_hash_mismatch_fails_and_gives_the_served_hash(tmp_path: Path, web: WebServer) -> None:
    url = web.add("/provision.sh", GOOD)
    report = await check(tmp_path, web, url, provision_script_sha256="0" * 64)
    assert not report.ok
    sha = report.get("SHA-256")
    assert sha is not None and sha.status == "fail" and GOOD_SHA in sha.fix


async def test_no_pin_warns_with_the_value_to_set(tmp_path: Path, web: WebServer) -> None:
    report = await check(tmp_path, web, web.add("/provision.sh", GOOD))
    assert report.ok
    sha = report.get("SHA-256")
    assert sha is not None and sha.status == "warn" and sha.fix == f"set PROVISION_SCRIPT_SHA256={GOOD_SHA}"


async def test_empty_body_fails(tmp_path: Path, web: WebServer) -> None:
    report = await check(tmp_path, web, web.add("/provision.sh", b"  \n"))
    assert not report.ok and "empty body" in report.get("script body").detail  # type: ignore[union-attr]


async def test_html_page_fails(tmp_path: Path, web: WebServer) -> None:
    url = web.add("/provision.sh", b"<!DOCTYPE html>\n<html><head><title>Gist</title></head></html>")
    report = await check(tmp_path, web, url)
    body = report.get("script body")
    assert not report.ok and body is not None and "an HTML page, not a shell script" == body.detail
    assert "Raw URL" in body.fix


async def test_json_error_fails(tmp_path: Path, web: WebServer) -> None:
    report = await check(tmp_path, web, web.add("/provision.sh", b'{"message": "Not Found"}'))
    assert not report.ok and "JSON" in report.get("script body").detail  # type: ignore[union-attr]


async def test_python_shebang_fails(tmp_path: Path, web: WebServer) -> None:
    report = await check(tmp_path, web, web.add("/provision.py", b"#!/usr/bin/env python3\nprint(1)\n"))
    assert not report.ok and "not a bash/sh shebang" in report.get("script body").detail  # type: ignore[union-attr]


async def test_old_script_with_its_own_log_path_fails(tmp_path: Path, web: WebServer) -> None:
    # The audit's provision-reliable.sh wrote /workspace/provision_v3.log while the collector read another.
    report = await check(tmp_path, web, web.add("/provision-reliable.sh", OLD_SCRIPT))
    assert not report.ok
    assert status(report, "log path") == "fail" and status(report, "events") == "fail"
    assert status(report, "repo copy") == "warn"


async def test_secret_in_url_fails_without_echoing_it(tmp_path: Path, web: WebServer) -> None:
    url = web.add("/provision.sh", GOOD) + "?token=GHSAT0SEKRIT"
    report = await check(tmp_path, web, url, provision_script_sha256=GOOD_SHA)
    assert not report.ok and status(report, "URL secrets") == "fail"
    assert "token" in report.get("URL secrets").detail  # type: ignore[union-attr]
    assert "GHSAT0SEKRIT" not in report.render()


async def test_connection_refused_is_a_clear_fail(tmp_path: Path, web: WebServer) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    report = await check(tmp_path, web, f"http://127.0.0.1:{port}/provision.sh")
    assert not report.ok
    assert "could not connect" in report.get("script download").detail  # type: ignore[union-attr]


async def test_slow_server_times_out(tmp_path: Path, web: WebServer) -> None:
    hold = threading.Event()
    web.routes["/slow.sh"] = Route(200, GOOD, {}, hold)
    try:
        report = await preflight(make_settings(tmp_path, provision_script_url=web.base + "/slow.sh"),
                                 request_timeout_s=0.2)
    finally:
        hold.set()
    assert not report.ok
    assert "no answer within 0.2s" in report.get("script download").detail  # type: ignore[union-attr]


async def test_missing_url_and_oversized_launch_fail(tmp_path: Path) -> None:
    report = await preflight(make_settings(tmp_path, provision_script_url=None))
    assert not report.ok and report.checks[0].detail == "PROVISION_SCRIPT_URL is not set"


async def test_launch_limits_are_checked(tmp_path: Path, web: WebServer) -> None:
    url = web.add("/provision.sh", GOOD)
    report = await check(tmp_path, web, url, provision_script_sha256=GOOD_SHA, docker_image="x" * 1100)
    assert not report.ok and "image name is 1100 characters" in report.get("launch").detail  # type: ignore[union-attr]


async def test_caller_client_is_used_and_left_open(tmp_path: Path, web: WebServer) -> None:
    url = web.add("/provision.sh", GOOD)
    async with httpx.AsyncClient() as client:
        report = await preflight(make_settings(tmp_path, provision_script_url=url,
                                               provision_script_sha256=GOOD_SHA), http=client)
        assert report.ok
        assert (await client.get(url)).status_code == 200
