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
from bot.settings import ConfigError, Settings

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
        mark = {True: "ok     ", False: "PROBLEM", None: "note   "}[line.ok]
        print(f"{mark}  {line.name:<{width}}  {line.detail}", file=out)
        if line.fix and line.ok is False:
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
    config_failed = bool(missing)
    runtime_failed = False

    # Vast key: one call to the current-user endpoint explains auth problems.
    if settings.is_sim or settings.vast_api_key is not None:
        from bot.vast.errors import VastAuthError, VastError

        try:
            async with open_vast(settings, SystemClock()) as vast:
                user = await vast.current_user()
            credit = f"credit ${user.credit:.2f}" if user.credit is not None else "credit unknown"
            lines.append(CheckLine("Vast API", True, f"key accepted ({credit})"))
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
        try:
            from bot.provisioning.preflight import preflight
        except ImportError:  # pragma: no cover - preflight lands with the provisioning contract
            preflight = None
        if preflight is not None:
            report = await preflight(settings)
            for item in report.checks:
                ok = {"ok": True, "warn": None, "fail": False}[item.status]
                if ok is False:
                    config_failed = True
                lines.append(CheckLine(f"preflight: {item.name}", ok, item.detail, item.fix or ""))

    # Database: can be created and migrated.
    try:
        from bot.db.store import Store

        store = await Store.open(settings.database_path)
        await store.close()
        lines.append(CheckLine("DATABASE_PATH", True, f"{settings.database_path} opened and migrated"))
    except Exception as exc:
        runtime_failed = True
        lines.append(CheckLine("DATABASE_PATH", False, f"cannot open {settings.database_path}: {exc}",
                               "make the directory writable or point DATABASE_PATH elsewhere"))

    _print_checks(lines, out)
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


def offer_query_from(settings: Settings, *, gpu: str | None, num_gpus: int, min_vram: float | None,
                     max_price: float | None, limit: int, disk_gb: int | None = None,
                     excluded_countries: list[str] | None = None) -> Any:
    from bot.vast.models import OfferQuery

    return OfferQuery(
        gpu_names=[gpu] if gpu else None,
        num_gpus=num_gpus,
        min_vram_gb=min_vram,
        max_dph=max_price if max_price is not None else settings.max_price_per_hour,
        min_reliability=settings.min_reliability,
        disk_gb=disk_gb or settings.disk_gb,
        excluded_countries=settings.excluded_countries if excluded_countries is None else excluded_countries,
        limit=limit,
    )


def offer_row(offer: Any) -> dict[str, Any]:
    return {
        "id": offer.id,
        "gpu": offer.gpu_name,
        "num_gpus": offer.num_gpus,
        "vram_gb": round(offer.vram_gb, 1),
        "dph_total": round(offer.dph_total, 4),
        "country": offer.country,
        "geolocation": offer.geolocation,
        "reliability": round(offer.reliability, 4) if offer.reliability is not None else None,
        "inet_down_mbps": offer.inet_down,
        "machine_id": offer.machine_id,
    }


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str]], out: TextIO) -> None:
    cells = [[("" if r.get(k) is None else str(r.get(k))) for k, _ in columns] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (_, h) in enumerate(columns)]
    print("  ".join(h.ljust(w) for (_, h), w in zip(columns, widths, strict=True)), file=out)
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)), file=out)


async def offers(settings: Settings, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from bot.vast.errors import VastAuthError, VastError

    query = offer_query_from(settings, gpu=args.gpu, num_gpus=args.num_gpus, min_vram=args.min_vram,
                             max_price=args.max_price, limit=args.limit)
    try:
        async with open_vast(settings, SystemClock()) as vast:
            found = await vast.search_offers(query)
    except VastAuthError as exc:
        print(f"Vast refused the API key: {exc}. Check VAST_API_KEY.", file=sys.stderr)
        return EXIT_CONFIG
    except VastError as exc:
        print(f"Offer search failed: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    rows = [offer_row(o) for o in found[: args.limit]]
    if args.json:
        json.dump({"offers": rows}, out, indent=2)
        print(file=out)
        return EXIT_OK
    if not rows:
        print("No offers match (excluded countries: "
              f"{','.join(settings.excluded_countries) or 'none'}). Try a higher --max-price.", file=out)
        return EXIT_OK
    _table(rows, [("id", "OFFER"), ("gpu", "GPU"), ("num_gpus", "N"), ("vram_gb", "VRAM GB"),
                  ("dph_total", "$/h"), ("country", "CC"), ("reliability", "RELIAB"),
                  ("inet_down_mbps", "DOWN Mbps")], out)
    return EXIT_OK


async def status(settings: Settings, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from bot.db.store import Store
    from bot.vast.errors import VastAuthError, VastError

    try:
        async with open_vast(settings, SystemClock()) as vast:
            instances = await vast.list_instances()
    except VastAuthError as exc:
        print(f"Vast refused the API key: {exc}. Check VAST_API_KEY.", file=sys.stderr)
        return EXIT_CONFIG
    except VastError as exc:
        print(f"Listing instances failed: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    store = await Store.open(settings.database_path)
    try:
        rows: list[dict[str, Any]] = []
        seen: set[int] = set()
        for inst in instances:
            rental = await store.get_rental_by_instance(inst.id)
            seen.add(inst.id)
            rows.append({
                "instance_id": inst.id, "label": inst.label, "status": inst.actual_status,
                "dph_total": inst.dph_total, "gpu": inst.gpu_name,
                "rental_id": rental.id if rental else None,
                "rental_state": rental.state.value if rental else "UNKNOWN TO BOT (still billing)",
            })
        for rental in await store.active_rentals():
            if rental.instance_id is not None and rental.instance_id not in seen:
                rows.append({"instance_id": rental.instance_id, "label": rental.label, "status": "gone",
                             "dph_total": rental.dph_total, "gpu": rental.gpu_name,
                             "rental_id": rental.id, "rental_state": rental.state.value})
    finally:
        await store.close()
    if args.json:
        json.dump({"instances": rows}, out, indent=2, default=str)
        print(file=out)
        return EXIT_OK
    if not rows:
        print("No instances on the account and no active rentals.", file=out)
        return EXIT_OK
    _table(rows, [("instance_id", "INSTANCE"), ("label", "LABEL"), ("status", "STATUS"), ("gpu", "GPU"),
                  ("dph_total", "$/h"), ("rental_id", "RENTAL"), ("rental_state", "BOT STATE")], out)
    return EXIT_OK


async def demo(args: argparse.Namespace) -> int:
    from bot.rehearsal.demo import run_demo

    return await run_demo(scenario=args.scenario, speed=args.speed, list_only=args.list)


def run_bot(settings: Settings) -> int:
    from bot.app import run

    try:
        return run(settings)
    except ConfigError:
        raise
