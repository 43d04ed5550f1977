"""Implementations of the CLI commands (argument parsing lives in ``bot.__main__``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from bot.backend import open_vast
from bot.clock import SystemClock
from bot.settings import ConfigError, Settings, unknown_setting_keys

EXIT_OK, EXIT_RUNTIME, EXIT_CONFIG = 0, 1, 2


@dataclass
class CheckLine:
    name: str
    ok: bool | None  # None = informational / skipped
    detail: str
    fix: str = ""


def _print_checks(lines: list[CheckLine], out: TextIO) -> None:
    width = max(len(line.name) for line in lines)
    for line in lines:
        mark = {True: "ok     ", False: "PROBLEM", None: "warn   " if line.fix else "note   "}[line.ok]
        print(f"{mark}  {line.name:<{width}}  {line.detail}", file=out)
        if line.fix and line.ok is not True:
            print(f"{'':9}{'':<{width}}  fix: {line.fix}", file=out)


async def check(settings: Settings, out: TextIO = sys.stdout) -> int:
    """Validate settings and reach each dependency once. 2 = configuration, 1 = runtime problem."""
    lines: list[CheckLine] = []
    missing = settings.missing_for("check")
    for name, why in missing:
        lines.append(CheckLine(name, False, "not set", f"set {name}: {why}"))
    if settings.is_sim:
        lines.append(CheckLine("VAST_BACKEND", None, "sim: the built-in simulator, no spend, no key needed"))
        for name, why in settings.missing_for("run"):
            lines.append(CheckLine(name, None, f"not set (needed by `run`: {why})"))
        from bot.sim.scenarios import scenario_names

        if settings.sim_scenario not in scenario_names():
            lines.append(CheckLine("SIM_SCENARIO", False, f"unknown scenario {settings.sim_scenario!r}",
                                   f"choose one of {', '.join(scenario_names())}"))
            missing = [*missing, ("SIM_SCENARIO", "")]
    config_failed = bool(missing)
    runtime_failed = False
    for name, where, closest in unknown_setting_keys(Path(".env")):
        hint = f"did you mean {closest}?" if closest else "see .env.example for the setting names"
        lines.append(CheckLine(name, None, f"in {where} is not a setting and is ignored; {hint}",
                               f"rename it to {closest}" if closest else "remove it"))

    # Vast key: one call to the current-user endpoint explains auth problems.
    if settings.is_sim or settings.vast_api_key is not None:
        from bot.vast.errors import VastAuthError, VastError

        try:
            async with open_vast(settings, SystemClock()) as vast:
                user = await vast.current_user()
            credit = f"credit ${user.credit:.2f}" if user.credit is not None else "credit unknown"
            source = "" if settings.is_sim else f" from {settings._key_source}"
            lines.append(CheckLine("Vast API", True, f"key{source} accepted ({credit})"))
        except VastAuthError as exc:
            config_failed = True
            lines.append(CheckLine("Vast API", False, f"key refused: {exc}",
                                   "create a new API key at console.vast.ai > Account and set VAST_API_KEY"))
        except VastError as exc:
            runtime_failed = True
            lines.append(CheckLine("Vast API", False, f"not reachable: {exc}",
                                   f"check network access to {settings.vast_api_url}"))

    # SSH key: present and readable (the simulator makes its own).
    if settings.ssh_key_path is not None:
        path = settings.ssh_key_path
        problem = await asyncio.to_thread(_ssh_key_problem, path)
        if problem:
            config_failed = True
            lines.append(CheckLine("SSH_KEY_PATH", False, problem,
                                   "point SSH_KEY_PATH at the private key whose public half is on your Vast account"))
        else:
            lines.append(CheckLine("SSH_KEY_PATH", True, f"{path} is a readable private key"))
    elif settings.is_sim:
        lines.append(CheckLine("SSH_KEY_PATH", None, "not set (the simulator generates its own key)"))

    # Provisioning script preflight, when configured.
    if settings.provision_script_url is not None:
        from bot.provisioning.preflight import preflight

        report = await preflight(settings)
        for item in report.checks:
            ok = {"ok": True, "warn": None, "fail": False}[item.status]
            if ok is False:
                config_failed = True
            lines.append(CheckLine(f"preflight: {item.name}", ok, item.detail, item.fix or ""))

    # Database: usable, sound, and never created by a check.
    db_line, db_config = await _database_check(settings.database_path)
    lines.append(db_line)
    config_failed = config_failed or db_config

    _print_checks(lines, out)
    pin = next((line.fix.removeprefix("set ") for line in lines
                if line.fix.startswith("set PROVISION_SCRIPT_SHA256=") and settings.provision_script_sha256 is None),
               None)
    if pin is not None:
        print(f"\nNo pin is set for the provisioning script. Add this line to the env file:\n\n{pin}", file=out)
    print_spending(settings, out)
    if config_failed:
        print("\nConfiguration problems found (exit 2).", file=out)
        return EXIT_CONFIG
    if runtime_failed:
        print("\nRuntime problems found (exit 1).", file=out)
        return EXIT_RUNTIME
    print("\nAll checks passed.", file=out)
    return EXIT_OK


def _ssh_key_problem(path: Path) -> str | None:
    path = path.expanduser()
    if not path.exists():
        return f"{path} does not exist"
    if not path.is_file():
        return f"{path} is not a file"
    if not os.access(path, os.R_OK):
        return f"{path} is not readable by this user"
    try:
        import asyncssh

        asyncssh.read_private_key(str(path))
    except Exception as exc:
        return f"{path} is not a usable private key ({type(exc).__name__}; passphrase-protected keys are not supported)"
    return None


async def _database_check(path: Path) -> tuple[CheckLine, bool]:
    """(line, is a configuration problem). An existing file is opened, migrated and quick-checked; a
    missing one is only judged creatable (a check creates nothing)."""
    from bot.db.store import DatabasePathError, Store, database_path_problem

    problem = await asyncio.to_thread(database_path_problem, path)
    if problem is not None:
        return CheckLine("DATABASE_PATH", False, f"{path}: {problem.problem}", problem.fix), True
    if not await asyncio.to_thread(path.exists):
        return CheckLine("DATABASE_PATH", True, f"{path} does not exist yet; `run` will create it"), False
    try:
        store = await Store.open(path)
    except DatabasePathError as exc:
        return CheckLine("DATABASE_PATH", False, f"{path}: {exc.problem}", exc.fix), True
    try:
        findings = await store.quick_check()
    finally:
        await store.close()
    if findings:
        from bot.db.store import _recovery_fix

        return CheckLine("DATABASE_PATH", False, f"{path}: PRAGMA quick_check found damage: {findings[0]}",
                         _recovery_fix(path)), True
    return CheckLine("DATABASE_PATH", True, f"{path} opened, migrated, quick_check ok"), False


def print_spending(settings: Settings, out: TextIO) -> None:
    """The effective settings that decide what money is spent, so a typo'd or missing one shows."""
    from bot.durations import format_duration

    countries = ",".join(settings.excluded_countries) or "none (every country allowed)"
    rows = [
        ("MAX_PRICE_PER_HOUR", f"${settings.max_price_per_hour:.2f}/h (the dearest offer that may be rented)"),
        ("EXCLUDED_COUNTRIES", countries),
        ("MIN_RELIABILITY", f"{settings.min_reliability:g}"),
        ("RENTAL_DOLLAR_CAP", f"${settings.rental_dollar_cap:.2f} per rental"),
        ("SELF_APPROVE_MAX_PRICE", f"${settings.self_approve_max_price:.2f}/h"),
        ("TEARDOWN_POLICY", settings.teardown_policy + (
            " (conclusive failures destroyed at once; ambiguous ones proposed, destroyed on expiry)"
            if settings.teardown_policy == "destroy" else " (every teardown proposed; destroyed on expiry)")),
        ("PROPOSAL_TIMEOUT", format_duration(settings.proposal_timeout)),
        ("deadlines", f"container {format_duration(settings.container_running_deadline)}, "
                      f"SSH {format_duration(settings.ssh_ready_deadline)}, "
                      f"provisioning start {format_duration(settings.provisioning_started_deadline)}, "
                      f"ComfyUI {format_duration(settings.comfyui_ready_deadline)}, "
                      f"whole run {format_duration(settings.provision_deadline)}, "
                      f"stall {format_duration(settings.stall_timeout)}"),
        ("DISK_GB", f"{settings.disk_gb} GB per instance (billed too)"),
    ]
    width = max(len(name) for name, _ in rows)
    print("\nWhat will spend money:", file=out)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}", file=out)


def check_running(settings: Settings, *, max_age: float | None = None, out: TextIO = sys.stdout) -> int:
    """``check --running``: 0 when a running bot's heartbeat is fresh, 1 when stale or missing."""
    from bot import health

    limit = max_age if max_age is not None else health.stale_after(settings.poll_interval)
    code, line = health.running_verdict(settings.heartbeat_file, SystemClock().now(), limit)
    print(line, file=out)
    return code


# ---------------------------------------------------------------- offers and GPUs

# Vast's own spellings, for case-insensitive matching without a search (others are looked up on offer).
COMMON_GPUS: tuple[str, ...] = (
    "RTX 4090", "RTX 5090", "RTX 3090", "RTX 3090 Ti", "RTX 4080", "RTX 4080S", "RTX 4070 Ti", "RTX 3080",
    "RTX A4000", "RTX A5000", "RTX A6000", "RTX 6000Ada", "L4", "L40", "L40S", "A40", "A10",
    "A100 PCIE", "A100 SXM4", "A100X", "H100 PCIE", "H100 SXM", "H100 NVL", "H200", "Tesla V100", "Tesla T4",
)


def _gpu_key(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).lower()


def match_gpu_name(wanted: str, known: list[str] | tuple[str, ...]) -> str | None:
    """Vast's spelling of ``wanted`` (``rtx_4090`` -> ``RTX 4090``) among ``known``, or None."""
    key = _gpu_key(wanted)
    return next((name for name in known if _gpu_key(name) == key), None)


def offer_query_from(settings: Settings, *, gpu: str | None, num_gpus: int | None, min_vram: float | None,
                     max_price: float | None, limit: int, disk_gb: int | None = None,
                     excluded_countries: list[str] | None = None, min_reliability: float | None = -1.0) -> Any:
    from bot.vast.models import OfferQuery

    return OfferQuery(
        gpu_names=[gpu] if gpu else None,
        num_gpus=num_gpus,
        min_vram_gb=min_vram,
        max_dph=max_price if max_price is not None else settings.max_price_per_hour,
        min_reliability=settings.min_reliability if min_reliability == -1.0 else min_reliability,
        disk_gb=disk_gb or settings.disk_gb,
        excluded_countries=settings.excluded_countries if excluded_countries is None else excluded_countries,
        limit=limit,
    )


def _extra(offer: Any, name: str) -> Any:
    extra = getattr(offer, "model_extra", None) or {}
    return extra.get(name)


def offer_row(offer: Any) -> dict[str, Any]:
    dlperf = _extra(offer, "dlperf")
    return {
        "id": offer.id,
        "gpu": offer.gpu_name,
        "num_gpus": offer.num_gpus,
        # GiB as Vast counts it (gpu_ram MB / 1024): a 24 GB card shows 24, not 24.6.
        "vram_gb": round(offer.gpu_ram / 1024, 1) if offer.gpu_ram is not None else None,
        "dph_total": round(offer.dph_total, 4),
        "country": offer.country,
        "geolocation": offer.geolocation,
        "reliability": round(offer.reliability, 4) if offer.reliability is not None else None,
        "inet_down_mbps": round(offer.inet_down) if offer.inet_down is not None else None,
        "disk_gb": round(offer.disk_space) if offer.disk_space is not None else None,
        "cuda": offer.cuda_max_good,
        "dlperf": round(float(dlperf), 1) if isinstance(dlperf, int | float) else None,
        "verified": offer.verified,
        "machine_id": offer.machine_id,
    }


# --cols name -> (row key, header); the base table always shows offer, GPU, N, VRAM, $/h, country.
EXTRA_COLUMNS: dict[str, tuple[str, str]] = {
    "reliability": ("reliability", "RELIAB"),
    "down": ("inet_down_mbps", "DOWN Mbps"),
    "disk": ("disk_gb", "DISK GB"),
    "cuda": ("cuda", "CUDA"),
    "dlperf": ("dlperf", "DLPERF"),
    "verified": ("verified", "VERIFIED"),
    "machine": ("machine_id", "MACHINE"),
}
DEFAULT_EXTRA = ("reliability", "down")
ORDER_KEYS: dict[str, str] = {
    "price": "dph_total", "dph": "dph_total", "vram": "vram_gb", "dlperf": "dlperf", "reliability": "reliability",
    "down": "inet_down_mbps", "disk": "disk_gb", "cuda": "cuda", "gpus": "num_gpus",
}


class UsageProblem(Exception):
    """A bad option value found after parsing (exit 2)."""


def _columns(cols: str | None) -> list[tuple[str, str]]:
    base = [("id", "OFFER"), ("gpu", "GPU"), ("num_gpus", "N"), ("vram_gb", "VRAM GiB"), ("dph_total", "$/h"),
            ("country", "CC")]
    wanted = list(DEFAULT_EXTRA)
    if cols:
        names = [c.strip().lower() for c in cols.split(",") if c.strip()]
        if "all" in names:
            names = list(EXTRA_COLUMNS)
        unknown = [c for c in names if c not in EXTRA_COLUMNS]
        if unknown:
            raise UsageProblem(f"unknown column(s) {', '.join(unknown)}; choose from "
                               f"{', '.join(EXTRA_COLUMNS)}, all")
        wanted = names
    return base + [EXTRA_COLUMNS[c] for c in wanted]


def _order(order: str) -> tuple[str, bool]:
    text = order.strip().lower()
    descending = text.endswith("-")
    name = text.rstrip("-+")
    if name not in ORDER_KEYS:
        raise UsageProblem(f"cannot order by {order!r}; choose from {', '.join(ORDER_KEYS)} (a trailing - "
                           "sorts descending)")
    return ORDER_KEYS[name], descending


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str]], out: TextIO) -> None:
    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, bool):
            return "yes" if value else "no"
        return str(value)

    cells = [[cell(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (_, h) in enumerate(columns)]
    print("  ".join(h.ljust(w) for (_, h), w in zip(columns, widths, strict=True)).rstrip(), file=out)
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip(), file=out)


async def _gpu_names_on_offer(vast: Any, settings: Settings, max_price: float | None) -> dict[str, tuple[int, float]]:
    """GPU name -> (offers, cheapest $/h) among offers passing the bot's country and reliability filters."""
    query = offer_query_from(settings, gpu=None, num_gpus=None, min_vram=None, max_price=max_price, limit=984)
    found: dict[str, tuple[int, float]] = {}
    for offer in await vast.search_offers(query):
        if not offer.gpu_name or offer.dph_total is None:
            continue
        count, cheapest = found.get(offer.gpu_name, (0, float("inf")))
        found[offer.gpu_name] = (count + 1, min(cheapest, offer.dph_total))
    return found


async def _emptiest_filter(vast: Any, settings: Settings, args: argparse.Namespace, gpu: str | None,
                           max_price: float) -> str:
    """Which single filter, when lifted, brings back the most offers (what to relax)."""
    trials: list[tuple[str, dict[str, Any]]] = [
        (f"--max-price {max_price:g}", {"max_price": 1000.0}),
        (f"excluded countries {','.join(settings.excluded_countries)}", {"excluded_countries": []}),
        (f"MIN_RELIABILITY {settings.min_reliability:g}", {"min_reliability": None}),
    ]
    if gpu:
        trials.append((f"--gpu {gpu!r}", {"gpu": None}))
    if args.min_vram is not None:
        trials.append((f"--min-vram {args.min_vram:g}", {"min_vram": None}))
    if args.num_gpus != 1:
        trials.append((f"--num-gpus {args.num_gpus}", {"num_gpus": None}))
    best, best_count = "", 0
    for label, change in trials:
        params: dict[str, Any] = {"gpu": gpu, "num_gpus": args.num_gpus, "min_vram": args.min_vram,
                                  "max_price": max_price, "limit": 100, **change}
        if not settings.excluded_countries and "excluded_countries" in change:
            continue
        count = len(await vast.search_offers(offer_query_from(settings, **params)))
        if count > best_count:
            best, best_count = label, count
    if not best:
        return "no single filter explains it: there may be no such offers right now."
    shown = f"{best_count}+" if best_count >= 100 else str(best_count)
    return f"the filter removing the most offers is {best} ({shown} offer(s) without it)."


async def offers(settings: Settings, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from bot.vast.errors import VastAuthError, VastError

    try:
        columns = _columns(args.cols)
        order_key, descending = _order(args.order)
    except UsageProblem as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    max_price = args.max_price if args.max_price is not None else settings.max_price_per_hour
    try:
        async with open_vast(settings, SystemClock()) as vast:
            gpu = args.gpu
            if gpu:
                gpu = match_gpu_name(gpu, COMMON_GPUS)
                if gpu is None:
                    on_offer = await _gpu_names_on_offer(vast, settings, 1000.0)
                    gpu = match_gpu_name(args.gpu, sorted(on_offer))
                if gpu is None:
                    print(f"error: no GPU called {args.gpu!r} is on offer; `vastops gpus` lists the names "
                          "(case and _ versus space do not matter)", file=sys.stderr)
                    return EXIT_CONFIG
            # Another order than price is applied to a wider cheapest-first page, then cut to --limit.
            fetch = args.limit if order_key == "dph_total" and not descending else min(max(args.limit * 5, 200), 984)
            query = offer_query_from(settings, gpu=gpu, num_gpus=args.num_gpus, min_vram=args.min_vram,
                                     max_price=max_price, limit=fetch)
            found = await vast.search_offers(query)
            why = "" if found else await _emptiest_filter(vast, settings, args, gpu, max_price)
    except VastAuthError as exc:
        print(f"Vast refused the API key: {exc}. Check VAST_API_KEY (or --api-key).", file=sys.stderr)
        return EXIT_CONFIG
    except VastError as exc:
        print(f"Offer search failed: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    rows = [offer_row(o) for o in found]
    present = [r for r in rows if r.get(order_key) is not None]
    present.sort(key=lambda r: r[order_key], reverse=descending)
    rows = (present + [r for r in rows if r.get(order_key) is None])[: args.limit]
    if args.json:
        json.dump({"offers": rows}, out, indent=2)
        print(file=out)
        return EXIT_OK
    if not rows:
        print(f"No offers match: {why}", file=out)
        return EXIT_OK
    _table(rows, columns, out)
    return EXIT_OK


async def gpus(settings: Settings, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from bot.vast.errors import VastAuthError, VastError

    try:
        async with open_vast(settings, SystemClock()) as vast:
            found = await _gpu_names_on_offer(vast, settings, args.max_price)
    except VastAuthError as exc:
        print(f"Vast refused the API key: {exc}. Check VAST_API_KEY (or --api-key).", file=sys.stderr)
        return EXIT_CONFIG
    except VastError as exc:
        print(f"Offer search failed: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    rows = [{"gpu": name, "offers": n, "cheapest_dph": round(p, 4)} for name, (n, p) in sorted(found.items())]
    if args.json:
        json.dump({"gpus": rows}, out, indent=2)
        print(file=out)
        return EXIT_OK
    if not rows:
        print("No offers pass the bot's filters right now.", file=out)
        return EXIT_OK
    _table(rows, [("gpu", "GPU"), ("offers", "OFFERS"), ("cheapest_dph", "FROM $/h")], out)
    return EXIT_OK


# ---------------------------------------------------------------- rentals: data access
# Small functions so the commands can later read through another API than the database file.

async def _open_store_if_present(path: Path) -> Any:
    """The store when the database exists; None when there is none yet (read commands create nothing)."""
    from bot.db.store import Store

    if not await asyncio.to_thread(path.exists):
        return None
    return await Store.open(path)


async def find_rental(store: Any, text: str) -> Any:
    """A rental by id (``12`` or ``#12``) or label, or None."""
    text = text.strip()
    head = text.lstrip("#")
    if head.isascii() and head.isdigit() and len(head) <= 18:
        return await store.get_rental(int(head))
    return await store.get_rental_by_label(text)


async def rental_watch_data(store: Any, rental_id: int) -> dict[str, Any]:
    state = await store.get_watch_state(rental_id)
    return dict(state.data) if state else {}


def _no_database(settings: Settings) -> None:
    print(f"No database at {settings.database_path}: the bot has no rentals there. Check DATABASE_PATH "
          "(the same file the running bot uses).", file=sys.stderr)


async def status(settings: Settings, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from bot.db.models import ACTIVE_STATES, OPEN_STATES
    from bot.db.store import DatabasePathError
    from bot.vast.errors import VastAuthError, VastError
    from bot.watch.cost import rental_cost

    now = SystemClock().now()

    try:
        async with open_vast(settings, SystemClock()) as vast:
            instances = await vast.list_instances()
    except VastAuthError as exc:
        print(f"Vast refused the API key: {exc}. Check VAST_API_KEY (or --api-key).", file=sys.stderr)
        return EXIT_CONFIG
    except VastError as exc:
        print(f"Listing instances failed: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    if settings.is_sim:
        print("note: VAST_BACKEND=sim starts a fresh, empty simulator for each command: it lists no instances; "
              "rentals a `VAST_BACKEND=sim run` made are shown from the database.", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    db_problem: DatabasePathError | None = None
    try:
        store = await _open_store_if_present(settings.database_path)
    except DatabasePathError as exc:
        store, db_problem = None, exc
    seen: set[int] = set()
    try:
        for inst in instances:
            rental = await store.get_rental_by_instance(inst.id) if store is not None else None
            seen.add(inst.id)
            rows.append({
                "instance_id": inst.id, "label": inst.label, "status": inst.actual_status,
                "dph_total": inst.dph_total, "gpu": inst.gpu_name,
                "rental_id": rental.id if rental else None,
                "rental_state": rental.state.value if rental else "untracked",
                "cost_usd": round(rental_cost(rental, now), 4) if rental else None,
            })
        if store is not None:
            wanted = set(ACTIVE_STATES) | set(OPEN_STATES)
            for rental in await store.list_rentals(states=wanted, limit=10_000):
                if rental.instance_id is not None and rental.instance_id in seen:
                    continue
                rows.append({"instance_id": rental.instance_id, "label": rental.label,
                             "status": "gone" if rental.instance_id is not None else "no instance yet",
                             "dph_total": rental.dph_total if rental.dph_total is not None else rental.quoted_dph,
                             "gpu": rental.gpu_name, "rental_id": rental.id, "rental_state": rental.state.value,
                             "cost_usd": round(rental_cost(rental, now), 4)})
    finally:
        if store is not None:
            await store.close()
    if args.json:
        payload: dict[str, Any] = {"instances": rows}
        if db_problem is not None:
            payload["database_error"] = db_problem.operator_message()
        json.dump(payload, out, indent=2, default=str)
        print(file=out)
    elif not rows:
        print("No instances on the account and no active rentals.", file=out)
    else:
        _table(rows, [("instance_id", "INSTANCE"), ("label", "LABEL"), ("status", "STATUS"), ("gpu", "GPU"),
                      ("dph_total", "$/h"), ("rental_id", "RENTAL"), ("rental_state", "BOT STATE")], out)
        if any(r["rental_state"] == "untracked" for r in rows):
            print("\nuntracked = an instance the bot does not know: it bills all the same "
                  "(`vastops destroy INSTANCE` removes it).", file=out)
    if db_problem is not None:
        print(f"\nThe database could not be read: {db_problem.operator_message()}", file=sys.stderr)
        print("The instance list above comes from Vast alone; every instance is shown as untracked.",
              file=sys.stderr)
        return EXIT_CONFIG
    return EXIT_OK


def _when(ts: float | None) -> str:
    from datetime import UTC, datetime

    return "—" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def rental_card(rental: Any, data: dict[str, Any], now: float) -> list[str]:
    """The status card of a rental as plain text lines (the Discord embed's content)."""
    from bot.durations import format_duration
    from bot.watch.cost import rental_cost
    from bot.watch.model import Milestone

    start = rental.started_at or rental.created_at
    end = rental.ended_at if rental.is_terminal and rental.ended_at else now
    dph = rental.dph_total if rental.dph_total is not None else rental.quoted_dph
    cost = None if rental.started_at is None or rental.instance_id is None else rental_cost(rental, now)
    milestones: dict[str, float] = dict(data.get("milestones") or {})
    findings = data.get("findings") or []
    noise = sum((data.get("noise") or {}).values())
    lines = [
        f"Rental #{rental.id} · {rental.gpu_name or 'GPU'} ×{rental.num_gpus or 1} · {rental.state.value}",
        f"label       {rental.label}",
        f"requested   by {rental.requester_name or '?'} at {_when(rental.created_at)}",
        f"instance    {rental.instance_id or '—'} (offer {rental.offer_id or '—'}, {rental.geolocation or '?'})",
        f"{'ran' if rental.is_terminal else 'up':<11} {format_duration(max(end - start, 0))}",
        f"price       {'—' if dph is None else f'${dph:.3f}/h'} · "
        f"{'—' if cost is None else f'${cost:.2f}'} so far",
    ]
    for name, url in (("ComfyUI", rental.comfyui_url), ("tunnel", rental.tunnel_url)):
        if url:
            lines.append(f"{name:<11} {url}")
    if rental.state_reason:
        lines.append(f"reason      {rental.state_reason}")
    path = [m.value for m in Milestone]
    reached = sorted(((ts, name) for name, ts in milestones.items()), key=lambda x: x[0])
    lines.append(f"milestones  {len(reached)} reached" + (
        f" · next: {next(n for n in path if n not in milestones).replace('_', ' ')}"
        if any(n not in milestones for n in path) else ""))
    for ts, name in reached:
        lines.append(f"  ✓ {name.replace('_', ' ')} +{format_duration(max(ts - start, 0))}")
    warnings = sum(1 for f in findings if f.get("severity") in ("warn", "error", "fatal"))
    if warnings or noise:
        lines.append(f"findings    {warnings} warning(s) or worse · {noise} harmless platform line(s) ignored")
    return lines


async def show(settings: Settings, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from bot.watch.redact import Redactor

    store = await _open_store_if_present(settings.database_path)
    if store is None:
        _no_database(settings)
        return EXIT_CONFIG
    try:
        rental = await find_rental(store, args.rental)
        if rental is None:
            print(f"No rental {args.rental!r} (give its id, e.g. 12, or its label; `vastops status` lists them).",
                  file=sys.stderr)
            return EXIT_CONFIG
        data = await rental_watch_data(store, rental.id)
    finally:
        await store.close()
    redactor = Redactor(settings.secret_values())
    if args.json:
        from dataclasses import asdict

        payload = {k: (v.value if hasattr(v, "value") else v) for k, v in asdict(rental).items()}
        payload["milestones"] = data.get("milestones") or {}
        print(redactor.redact(json.dumps(payload, indent=2, default=str)), file=out)
        return EXIT_OK
    for line in rental_card(rental, data, SystemClock().now()):
        print(redactor.redact(line), file=out)
    return EXIT_OK


async def rental_log_tail(store: Any, rental: Any, lines: int) -> tuple[list[str], str]:
    """What the bot holds of a rental's log: the container log it last polled, else its recorded events."""
    from bot.watch.engine import EV_DECISION, EV_FINDING, EV_INFO, EV_MILESTONE, EV_RECEIPT, EV_STATE

    data = await rental_watch_data(store, rental.id)
    tail = [str(x) for x in data.get("fallback_tail") or []]
    if tail:
        return tail[-lines:], "container log via the Vast API, as the bot last polled it"
    events = await store.events_for(
        rental.id, kinds=[EV_MILESTONE, EV_FINDING, EV_STATE, EV_INFO, EV_DECISION, EV_RECEIPT])
    return [_event_line(e.ts, e.kind, e.payload) for e in events][-lines:], "the bot's recorded events"


def _event_line(ts: float, kind: str, p: dict[str, Any]) -> str:
    from bot.watch.logtail import event_line

    return event_line(ts, kind, p)


async def logs(settings: Settings, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from bot.watch.model import Severity
    from bot.watch.redact import Redactor

    store = await _open_store_if_present(settings.database_path)
    if store is None:
        _no_database(settings)
        return EXIT_CONFIG
    try:
        rental = await find_rental(store, args.rental)
        if rental is None:
            print(f"No rental {args.rental!r} (give its id or label; `vastops status` lists them).", file=sys.stderr)
            return EXIT_CONFIG
        tail, source = await rental_log_tail(store, rental, args.tail)
    finally:
        await store.close()
    redactor = Redactor(settings.secret_values())
    tail = [redactor.redact(line) for line in tail]
    if args.errors:
        classifier = _classifier()
        tail = [line for line in tail if (found := classifier.classify_line(line)) is not None
                and not found.noise and found.severity.rank >= Severity.WARN.rank]
    print(f"# rental #{rental.id} · {rental.label} · {len(tail)} {'problem ' if args.errors else ''}line(s) "
          f"· {source}", file=sys.stderr)
    for line in tail:
        print(line, file=out)
    return EXIT_OK


def _classifier() -> Any:
    from bot.watch.classifier import Classifier, load_rules

    return Classifier(load_rules())


async def destroy(settings: Settings, args: argparse.Namespace, out: TextIO = sys.stdout,
                  stdin: TextIO = sys.stdin) -> int:
    """Destroy a rental through the rental service (verified with Vast, receipt recorded) or an instance."""
    from bot.db.store import Store
    from bot.rentals import DecisionResult, RentalService
    from bot.watch.engine import WatchEngine, WatchPolicy
    from bot.watch.redact import Redactor

    clock = SystemClock()
    user = os.environ.get("USER") or "terminal"
    if not await asyncio.to_thread(settings.database_path.exists) and not args.target.strip().isdigit():
        _no_database(settings)
        return EXIT_CONFIG
    # The rental service records the teardown and its receipt in the database (created if there
    # is none yet, when only an instance id was given).
    store = await Store.open(settings.database_path)
    try:
        async with open_vast(settings, clock) as vast:
            rental = await find_rental(store, args.target)
            instance_id: int | None = None
            if rental is None and args.target.strip().isdigit():
                instance_id = int(args.target.strip())
                rental = await store.get_rental_by_instance(instance_id)
            if rental is not None:
                what = (f"rental #{rental.id} ({rental.label}, {rental.state.value}, instance "
                        f"{rental.instance_id or 'none'}, {rental.gpu_name or 'GPU'})")
            elif instance_id is not None:
                listed = {i.id: i for i in await vast.list_instances()}
                if instance_id not in listed:
                    print(f"No rental and no instance {instance_id} on the account.", file=sys.stderr)
                    return EXIT_CONFIG
                inst = listed[instance_id]
                what = f"instance {instance_id} ({inst.gpu_name or 'GPU'}, {inst.label or 'no label'}, untracked)"
            else:
                print(f"No rental {args.target!r} (give a rental id or label, or an instance id).", file=sys.stderr)
                return EXIT_CONFIG
            if not args.yes:
                if not stdin.isatty():
                    print(f"Refusing to destroy {what} without confirmation: add -y.", file=sys.stderr)
                    return EXIT_CONFIG
                print(f"Destroy {what}? [y/N] ", end="", file=out, flush=True)
                if stdin.readline().strip().lower() not in ("y", "yes"):
                    print("Nothing destroyed.", file=out)
                    return EXIT_OK
            engine = WatchEngine(store=store, vast=vast, clock=clock, policy=WatchPolicy.from_settings(settings),
                                 redactor=Redactor(settings.secret_values()), notifier=None)
            service = RentalService(store=store, vast=vast, clock=clock, settings=settings, engine=engine)
            reason = args.reason or f"destroyed from the terminal by {user}"
            if rental is not None:
                decision = await service.destroy(rental.id, user_id=0, user_name=user, is_approver=True, reason=reason)
            else:
                assert instance_id is not None
                decision = await service.destroy_unknown_instance(instance_id, user_id=0, user_name=user,
                                                                  is_approver=True)
    finally:
        await store.close()
    print(decision.message, file=out)
    final = decision.rental
    if final is not None:
        for line in rental_card(final, {}, clock.now())[:6]:
            print(f"  {line}", file=out)
    if decision.result in (DecisionResult.APPROVED, DecisionResult.DENIED, DecisionResult.ALREADY_DECIDED):
        return EXIT_OK
    return EXIT_RUNTIME


async def demo(args: argparse.Namespace) -> int:
    from bot.rehearsal.demo import run_demo

    return await run_demo(scenario=args.scenario, speed=args.speed, list_only=args.list)


def run_bot(settings: Settings) -> int:
    from bot.app import run

    try:
        return run(settings)
    except ConfigError:
        raise
