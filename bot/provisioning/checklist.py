"""The preflight as the approver sees it, and the glue the rent flow calls.

* ``checklist_items`` keeps a report as a compact list stored in the approval's payload
  (``payload["checklist"]``: ``[{"s": "ok"|"warn"|"fail", "n": name, "d": detail, "f": fix}]``).
* ``render_checklist`` writes it as ✅/⚠️/⛔ lines that fit one Discord embed field (1024 characters):
  problems first, then the passes, collapsed into a count when space runs out.
* ``run_preflight`` calls any preflight callable, passing the offer and disk only when it takes them.
* ``preflight_payload`` is what ``RentalService.request`` adds to an approval's payload.
* ``disk_to_request`` is the disk /rent searches (and prices) with when the user gives none: ``DISK_GB``,
  or more when the manifest's models need more.
* ``hide_incompatible`` drops the offers that cannot run the manifest's torch from /rent's list and
  says why, counted ("3 offers hidden: CUDA 12.8 needs driver ≥ 570.26").
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from bot.provisioning.compat import compatible_offers
from bot.provisioning.manifest import torch_need
from bot.provisioning.manifest_checks import manifest_disk_plan, manifest_torch_need
from bot.provisioning.probes import MAX_REDIRECTS, ProbeCache, UrlMap, default_cache
from bot.settings import Settings
from bot.vast.models import Offer, OfferQuery

log = logging.getLogger(__name__)

FIELD_LIMIT = 1024  # Discord: one embed field's value
ITEM_DETAIL_MAX = 140
ICON = {"ok": "✅", "warn": "⚠️", "fail": "⛔"}
_ORDER = {"fail": 0, "warn": 1, "ok": 2}
PAYLOAD_TIMEOUT_S = 45.0


def checklist_items(report: Any) -> list[dict[str, str]]:
    """A report's checks as short dicts (JSON-ready); details and fixes cut to a phone line."""
    items: list[dict[str, str]] = []
    for check in getattr(report, "checks", []):
        status = str(check.status) if str(check.status) in ICON else "warn"
        item = {"s": status, "n": str(check.name)[:60], "d": str(check.detail)[:ITEM_DETAIL_MAX]}
        fix: object = getattr(check, "fix", "")
        if status != "ok" and fix:
            item["f"] = str(fix)[:ITEM_DETAIL_MAX]
        items.append(item)
    return items


def _line(item: Mapping[str, Any], with_fix: bool) -> str:
    line = f"{ICON.get(str(item.get('s')), '•')} {item.get('n', '?')}: {item.get('d', '')}"
    if with_fix and item.get("f"):
        line += f" → {item['f']}"
    return line


def render_checklist(items: Sequence[Mapping[str, Any]], limit: int = FIELD_LIMIT,
                     escape: Callable[[str], str] = lambda s: s) -> str:
    """✅/⚠️/⛔ lines within ``limit`` characters: problems (with their fix) first, passes after.

    Passes that do not fit become one "✅ N more checks passed" line; a problem that does not fit is
    cut, never dropped silently ("⛔ N more problems" ends the text). ``escape`` is applied per line
    (e.g. Discord markdown escaping) before measuring.
    """
    ordered = sorted(items, key=lambda i: _ORDER.get(str(i.get("s")), 1))
    problems = [i for i in ordered if i.get("s") != "ok"]
    passes = [i for i in ordered if i.get("s") == "ok"]
    lines: list[str] = []
    used = 0

    def fits(text: str, reserve: int = 0) -> bool:
        return used + len(text) + (1 if lines else 0) + reserve <= limit

    def add(text: str) -> None:
        nonlocal used
        used += len(text) + (1 if lines else 0)
        lines.append(text)

    for n, item in enumerate(problems):
        left = len(problems) - n - 1
        tail_reserve = 40 if (left or passes) else 0
        text = escape(_line(item, with_fix=True))
        if not fits(text, tail_reserve):
            short = escape(_line(item, with_fix=False))
            text = short if fits(short, tail_reserve) else short[: max(0, limit - used - tail_reserve - 2)] + "…"
        if not fits(text, tail_reserve) or not text.strip("…"):
            add(f"⛔ {len(problems) - n} more problem(s) not shown")
            return "\n".join(lines)
        add(text)
    for n, item in enumerate(passes):
        text = escape(_line(item, with_fix=False))
        left = len(passes) - n
        rest = f"✅ {left} more check(s) passed"
        if not fits(text, len(rest) + 1 if left > 1 else 0):
            add(rest)
            break
        add(text)
    return "\n".join(lines) or "no checks ran"


def summary_counts(items: Sequence[Mapping[str, Any]]) -> str:
    """E.g. ``9 ✅ · 1 ⚠️ · 1 ⛔``."""
    counts = {s: sum(1 for i in items if i.get("s") == s) for s in ("ok", "warn", "fail")}
    return " · ".join(f"{n} {ICON[s]}" for s, n in counts.items() if n) or "no checks"


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


async def run_preflight(preflight: Callable[..., Any], settings: Settings, *, offer: Offer | None = None,
                        disk_gb: int | None = None) -> Any:
    """Call ``preflight(settings)``, adding ``offer``/``disk_gb`` when the callable takes them."""
    kwargs: dict[str, Any] = {}
    if offer is not None and _accepts(preflight, "offer"):
        kwargs["offer"] = offer
    if disk_gb is not None and _accepts(preflight, "disk_gb"):
        kwargs["disk_gb"] = disk_gb
    return await preflight(settings, **kwargs)


async def preflight_payload(preflight: Callable[..., Any] | None, settings: Settings, offer: Offer,
                            query: OfferQuery | None) -> dict[str, Any]:
    """``{"checklist": [...], "preflight_ok": bool}`` for an approval request; ``{}`` without a preflight.

    Never raises: a preflight that cannot run is one ⚠️ item (the approval click runs it again and
    refuses to rent on a failure).
    """
    if preflight is None:
        return {}
    disk = int(query.disk_gb) if query is not None and query.disk_gb else None
    try:
        report = await asyncio.wait_for(run_preflight(preflight, settings, offer=offer, disk_gb=disk),
                                        timeout=PAYLOAD_TIMEOUT_S)
    except Exception as exc:  # the request stands; the click re-checks before anything is rented
        log.warning("preflight for the approval request failed to run", exc_info=True)
        return {"checklist": [{"s": "warn", "n": "preflight", "d": f"could not run ({type(exc).__name__}); "
                               "it runs again at approval"}], "preflight_ok": None}
    return {"checklist": checklist_items(report), "preflight_ok": bool(getattr(report, "ok", False))}


async def hide_incompatible(offers: Sequence[Offer], settings: Settings, *, http: httpx.AsyncClient | None = None,
                            cache: ProbeCache | None = None,
                            url_map: Mapping[str, str] | None = None) -> tuple[list[Offer], str]:
    """The offers that can run the manifest's torch, and a line saying how many were hidden and why."""
    if not (settings.provision_manifest or "").startswith(("http://", "https://")):
        need = torch_need([], settings.docker_image)  # only a manifest file carries pip lines
    elif http is not None:
        need = await manifest_torch_need(settings, http=http, cache=cache or default_cache(),
                                         urls=UrlMap(url_map or {}))
    else:
        async with httpx.AsyncClient(max_redirects=MAX_REDIRECTS) as client:
            need = await manifest_torch_need(settings, http=client, cache=cache or default_cache(),
                                             urls=UrlMap(url_map or {}))
    kept, hidden = compatible_offers(offers, need)
    return kept, hidden.summary()


async def disk_to_request(settings: Settings, *, http: httpx.AsyncClient | None = None,
                          cache: ProbeCache | None = None, url_map: Mapping[str, str] | None = None) -> int:
    """``DISK_GB``, raised to what the manifest's models, the image and the margin need."""
    if not (settings.provision_models or (settings.provision_manifest or "").startswith(("http://", "https://"))):
        return settings.disk_gb
    try:
        if http is not None:
            plan = await manifest_disk_plan(settings, http=http, cache=cache or default_cache(),
                                            urls=UrlMap(url_map or {}))
        else:
            async with httpx.AsyncClient(max_redirects=MAX_REDIRECTS) as client:
                plan = await manifest_disk_plan(settings, http=client, cache=cache or default_cache(),
                                                urls=UrlMap(url_map or {}))
    except Exception:  # the preflight's disk check still says what is needed
        log.warning("could not size the manifest's models", exc_info=True)
        return settings.disk_gb
    return max(settings.disk_gb, plan.need_gb) if plan is not None else settings.disk_gb
