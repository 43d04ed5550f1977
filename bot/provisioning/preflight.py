"""Checks run before any rent: the script URL really serves our provisioning script, the seam holds, and
the manifest (models, custom nodes, disk, GPU/CUDA; see ``manifest_checks``) fits the offer.

Each check says what it saw and, when it is not ok, how to fix it, in short lines that read on a phone.
``report.ok`` is False when any check failed; callers must not rent then (nothing is rented on hope).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx

from bot.provisioning.contract import ENV_EVENT_PREFIX, ENV_LOG_PATH, ENV_RUN_ID
from bot.provisioning.manifest_checks import DEFAULT_PROBE_TIMEOUT_S, check_manifest
from bot.provisioning.onstart import (
    VAST_ENV_TOTAL_MAX,
    VAST_ONSTART_MAX,
    LaunchError,
    build_launch,
)
from bot.provisioning.probes import MAX_REDIRECTS, ProbeCache, UrlMap, default_cache
from bot.provisioning.report import (
    SECRET_QUERY as _SECRET_QUERY,
)
from bot.provisioning.report import (
    PreflightCheck,
    PreflightReport,
    Status,
    host_path,
    short_url,
)
from bot.settings import Settings
from bot.vast.models import Offer

__all__ = ["PreflightCheck", "PreflightReport", "Status", "host_path", "preflight"]

DEFAULT_GIST_API_BASE = "https://api.github.com"
DEFAULT_TIMEOUT_S = 15.0
# The script in this checkout, when there is one (not in an installed wheel or container).
REPO_SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "provision.sh"

# gist raw URLs: /<user>/<gist id>/raw[/<revision>]/<file>. Matched on the path so GitHub Enterprise
# gist hosts are recognised too.
_GIST_PATH = re.compile(
    r"^/(?P<user>[^/]+)/(?P<id>[0-9a-f]{20,32})/raw/(?:(?P<rev>[0-9a-f]{7,40})/)?(?P<file>[^/]+)$"
)
_LOG_LITERAL = re.compile(r"(?<![\w$])/(?:workspace|var/log|root|tmp)/[\w./-]*\.log\b")
_COPY_RAW = "open the gist and copy the Raw URL of the script file"


def _kb(n: int) -> str:
    return f"{n / 1024:.1f} kB" if n >= 1024 else f"{n} bytes"


def _net_error(exc: httpx.HTTPError, what: str, request_timeout_s: float) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"{what}: no answer within {request_timeout_s:g}s"
    if isinstance(exc, httpx.TooManyRedirects):
        return f"{what}: too many redirects"
    if isinstance(exc, httpx.ConnectError):
        return f"{what}: could not connect ({exc})"
    return f"{what}: {type(exc).__name__} ({exc})"


async def preflight(
    settings: Settings,
    *,
    http: httpx.AsyncClient | None = None,
    gist_api_base: str = DEFAULT_GIST_API_BASE,
    request_timeout_s: float = DEFAULT_TIMEOUT_S,
    repo_script: Path | None = REPO_SCRIPT,
    offer: Offer | None = None,
    disk_gb: int | None = None,
    cache: ProbeCache | None = None,
    url_map: Mapping[str, str] | None = None,
    probe_timeout_s: float = DEFAULT_PROBE_TIMEOUT_S,
) -> PreflightReport:
    """Check the provisioning seam and the manifest before a rent; never raises for a network problem.

    With ``offer`` (and the ``disk_gb`` it will be rented with) the disk and GPU/CUDA checks are for that
    offer; without, the disk is checked against ``DISK_GB``. ``url_map`` sends the manifest's requests for
    an origin elsewhere (tests and the rehearsal serve huggingface.co, github.com ... on loopback).
    """
    report = PreflightReport()
    url = settings.provision_script_url
    own_client = http is None
    client = http or httpx.AsyncClient(max_redirects=MAX_REDIRECTS)
    try:
        if url is None:
            report.add("script URL", "fail", "PROVISION_SCRIPT_URL is not set",
                       "host deploy/provision.sh at a stable raw URL and set PROVISION_SCRIPT_URL")
        else:
            _check_url(url, report)
            body = await _fetch_script(client, url, gist_api_base, request_timeout_s, report)
            if body is not None and _check_body(body, url, report):
                _check_sha(body, settings.provision_script_sha256, report)
                _check_script_contract(body, settings, report)
                _check_repo_copy(body, repo_script, report)
            _check_launch(settings, report)
        await check_manifest(settings, report, http=client, cache=cache or default_cache(),
                             urls=UrlMap(url_map or {}), timeout_s=probe_timeout_s, offer=offer, disk_gb=disk_gb)
    finally:
        if own_client:
            await client.aclose()
    return report


def _check_launch(settings: Settings, report: PreflightReport) -> None:
    try:
        spec = build_launch(settings, run_id="preflight", label="vastops preflight")
    except LaunchError as exc:
        report.add("launch", "fail", "; ".join(exc.problems), "each problem names the setting to change")
        return
    env_size = sum(len(k) + len(v) for k, v in spec.env.items())
    if spec.env.get(ENV_LOG_PATH) != settings.provision_log_path:
        report.add("log path", "fail",
                   f"the instance would log to {spec.env.get(ENV_LOG_PATH)} but the watcher reads "
                   f"{settings.provision_log_path}", "both must come from PROVISION_LOG_PATH")
    report.add("launch", "ok",
               f"env {env_size}/{VAST_ENV_TOTAL_MAX} chars, onstart {len(spec.onstart)}/{VAST_ONSTART_MAX}")


def _check_url(url: str, report: PreflightReport) -> None:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    secret_keys = sorted({k for k, _ in query if _SECRET_QUERY.match(k)})
    if parts.username or parts.password:
        secret_keys.insert(0, "user:password@")
    if secret_keys:
        report.add("URL secrets", "fail",
                   f"the script URL carries a secret ({', '.join(secret_keys)}); it would show up in logs",
                   "serve the script from a public URL without credentials and pin its SHA-256")
    elif parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        report.add("URL secrets", "warn", "plain http: the script can be changed on the way",
                   "use https and pin PROVISION_SCRIPT_SHA256")
    else:
        report.add("URL secrets", "ok", "no credentials in the URL")
    gist = _GIST_PATH.match(parts.path)
    if gist and gist["rev"]:
        report.add("gist pin", "warn",
                   f"gist URL pinned to revision {gist['rev'][:12]}",
                   "pinned gist revisions go stale after force-push; pin a SHA-256 instead "
                   f"(use .../raw/{gist['file']} and set PROVISION_SCRIPT_SHA256)")


async def _fetch_script(
    client: httpx.AsyncClient, url: str, gist_api_base: str, request_timeout_s: float, report: PreflightReport
) -> bytes | None:
    shown = short_url(host_path(url))
    gist = _GIST_PATH.match(urlsplit(url).path)
    try:
        resp = await client.get(url, follow_redirects=True, timeout=request_timeout_s,
                                headers={"User-Agent": "vastops-preflight"})
    except httpx.HTTPError as exc:
        report.add("script download", "fail", _net_error(exc, shown, request_timeout_s),
                   "check the URL opens in a browser from this machine")
        return None
    final = short_url(host_path(str(resp.url)))
    via = f" (via {final})" if final != shown else ""
    if resp.status_code != 200:
        detail, fix = f"HTTP {resp.status_code} from {shown}{via}", "fix PROVISION_SCRIPT_URL"
        if resp.status_code == 404 and gist:
            detail, fix = await _explain_gist_404(client, gist, gist_api_base, request_timeout_s, detail)
        report.add("script download", "fail", detail, fix)
        return None
    report.add("script download", "ok", f"HTTP 200 from {shown}{via}, {_kb(len(resp.content))}")
    return resp.content


async def _explain_gist_404(
    client: httpx.AsyncClient, gist: re.Match[str], api_base: str, request_timeout_s: float, detail: str
) -> tuple[str, str]:
    """Why a gist raw URL is 404, from the gist API: wrong file name, vanished revision, or no gist."""
    gist_id, wanted, rev = gist["id"], gist["file"], gist["rev"]
    try:
        resp = await client.get(
            f"{api_base.rstrip('/')}/gists/{gist_id}",
            timeout=request_timeout_s,
            headers={"Accept": "application/vnd.github+json", "User-Agent": "vastops-preflight"},
        )
    except httpx.HTTPError as exc:
        why = _net_error(exc, "gist API", request_timeout_s)
        return f"{detail}; could not list the gist's files: {why}", _COPY_RAW
    if resp.status_code == 404:
        return f"{detail}; gist {gist_id} does not exist", "check the gist id in PROVISION_SCRIPT_URL"
    if resp.status_code != 200:
        return f"{detail}; gist API answered HTTP {resp.status_code}", _COPY_RAW
    try:
        data = resp.json()
        names = sorted(data.get("files") or {})
        versions = [str(h.get("version", "")) for h in data.get("history") or []]
    except (ValueError, AttributeError):
        return f"{detail}; the gist API answer was not readable", _COPY_RAW
    if wanted not in names:
        has = ", ".join(names) if names else "no files"
        suggestion = f".../raw/{names[0]}" if len(names) == 1 else "the Raw URL of the script file"
        return (f"{detail}; gist {gist_id[:8]} has no file {wanted}, it has: {has}",
                f"use {suggestion} and pin PROVISION_SCRIPT_SHA256")
    if rev and versions and not any(v.startswith(rev) for v in versions):
        return (f"{detail}; revision {rev[:12]} is not in the gist's history (force-push?)",
                f"use .../raw/{wanted} without a revision and pin PROVISION_SCRIPT_SHA256")
    return f"{detail}; the gist has {wanted} but this URL does not serve it", \
        f"use .../raw/{wanted} and pin PROVISION_SCRIPT_SHA256"


def _check_body(body: bytes, url: str, report: PreflightReport) -> bool:
    host = urlsplit(url).hostname or ""
    raw_hint = "use the Raw URL (raw.githubusercontent.com / gist.githubusercontent.com), not the page"
    if not body.strip():
        report.add("script body", "fail", "the URL answers 200 with an empty body",
                   "upload deploy/provision.sh")
        return False
    head = body.lstrip()[:200].decode("utf-8", "replace")
    if head[:1] in "<{[":
        kind = "a JSON document" if head[:1] in "{[" else "an HTML page"
        page = host in ("github.com", "gist.github.com") or head[:1] == "<"
        fix = raw_hint if page else "fix PROVISION_SCRIPT_URL"
        report.add("script body", "fail", f"{kind}, not a shell script", fix)
        return False
    first = body.split(b"\n", 1)[0].decode("utf-8", "replace").strip()
    if not first.startswith("#!") or not re.search(r"\b(bash|sh)\b", first):
        report.add("script body", "fail", f"first line is {first[:40]!r}, not a bash/sh shebang",
                   "the script must start with #!/usr/bin/env bash")
        return False
    report.add("script body", "ok", f"shell script ({first[:40]})")
    return True


def _check_sha(body: bytes, pin: str | None, report: PreflightReport) -> None:
    got = hashlib.sha256(body).hexdigest()
    if pin is None:
        report.add("SHA-256", "warn", "no pin: any change at the URL runs on the next rental",
                   f"set PROVISION_SCRIPT_SHA256={got}")
    elif pin.lower() == got:
        report.add("SHA-256", "ok", f"matches the pin {got[:12]}…")
    else:
        report.add("SHA-256", "fail", f"served script is {got[:12]}…, pin is {pin[:12]}…",
                   f"upload the pinned script, or if the change is meant: PROVISION_SCRIPT_SHA256={got}")


def _check_script_contract(body: bytes, settings: Settings, report: PreflightReport) -> None:
    text = body.decode("utf-8", "replace")
    missing = [name for name in (ENV_LOG_PATH, ENV_EVENT_PREFIX, ENV_RUN_ID) if name not in text]
    literals = sorted(set(_LOG_LITERAL.findall(text)) - {settings.provision_log_path})
    if ENV_LOG_PATH in missing:
        where = f" (it names {', '.join(literals[:2])})" if literals else ""
        report.add("log path", "fail",
                   f"the script never reads ${ENV_LOG_PATH}{where}; the watcher reads "
                   f"{settings.provision_log_path}", "serve deploy/provision.sh from this repo")
    elif literals:
        report.add("log path", "warn",
                   f"script uses ${ENV_LOG_PATH} but also names {', '.join(literals[:2])}",
                   f"the watcher reads only {settings.provision_log_path}")
    else:
        report.add("log path", "ok", f"script and watcher both use {settings.provision_log_path}")
    if missing:
        report.add("events", "fail", f"the script does not use {', '.join(missing)}: no vastops events",
                   "serve deploy/provision.sh from this repo")
    else:
        report.add("events", "ok", "script emits vastops events")


def _check_repo_copy(body: bytes, repo_script: Path | None, report: PreflightReport) -> None:
    if repo_script is None or not repo_script.is_file():
        return
    local = repo_script.read_bytes()
    if local == body:
        report.add("repo copy", "ok", "same as deploy/provision.sh here")
    else:
        report.add("repo copy", "warn",
                   f"differs from deploy/provision.sh here ({hashlib.sha256(local).hexdigest()[:12]}…)",
                   "upload the current deploy/provision.sh if the difference is not intended")
