"""The money rules as pure functions of a rental's state and the time: billing updates, the dollar
cap and the provisioning deadlines. They return findings; the engine records and acts on them.

Elapsed time is measured on the bot's own clock from when it created (or first saw) the instance:
Vast's ``start_date`` is only a cross-check, so a skewed host clock cannot kill a healthy rental.
"""

from __future__ import annotations

from typing import Any

from bot.db.models import Rental
from bot.durations import format_duration
from bot.vast.models import Instance
from bot.watch.cost import rental_cost
from bot.watch.model import Category, Finding, Milestone, Severity
from bot.watch.state import WatchMemory, WatchPolicy

SKEW_WARN = 60.0


def billing_update(rental: Rental, inst: Instance | None, status: str | None, now: float) -> dict[str, Any]:
    """Rental columns to change so that :func:`rental_cost` follows Vast's billing; {} if none.

    A rate change folds the cost so far into ``cost_base`` and restarts the stretches from now;
    a running stretch opens on the first poll that shows ``running`` and closes on the first
    that does not.
    """
    changes: dict[str, Any] = {}
    if inst is not None:
        total = inst.dph_total if inst.dph_total is not None else rental.dph_total
        base, storage = inst.dph_base, inst.storage_total_cost
        if total is not None and storage is not None and (base is None or abs(base + storage - total) > 1e-6):
            base = max(0.0, total - storage)  # the total is what Vast bills while running: trust it
        rates = (total, base if base is not None else rental.dph_base,
                 storage if storage is not None else rental.storage_dph)
        if rates != (rental.dph_total, rental.dph_base, rental.storage_dph):
            if rental.dph_total is not None or rental.dph_base is not None:
                # What ran so far stays at the rate it ran at; the new rate bills from now.
                changes["cost_base"] = rental_cost(rental, now)
                changes["billed_from"] = now
                changes["running_s"] = 0.0
                if rental.running_since is not None:
                    changes["running_since"] = now
            changes["dph_total"], changes["dph_base"], changes["storage_dph"] = rates
    running = status == "running"
    current_since = changes.get("running_since", rental.running_since)
    if running and current_since is None:
        changes["running_since"] = now
    elif not running and status is not None and current_since is not None:
        start = max(current_since, rental.billed_from or current_since)
        changes["running_s"] = changes.get("running_s", rental.running_s) + max(0.0, now - start)
        changes["running_since"] = None
    return changes


def clock_skew(rental: Rental, inst: Instance) -> float | None:
    """Seconds Vast's ``start_date`` is away from when the bot saw the create, if over a minute."""
    if inst.start_date is None or rental.started_at is None:
        return None
    skew = inst.start_date - rental.started_at
    return skew if abs(skew) > SKEW_WARN else None


def cap_finding(cost: float, policy: WatchPolicy, memory: WatchMemory) -> Finding | None:
    """The dollar-cap finding if ``cost`` reached the cap (again, at each multiple a human kept)."""
    level = 1 + sum(1 for key in memory.declined if key.startswith("engine.dollar_cap"))
    cap = policy.rental_dollar_cap * level
    if cost < cap:
        return None
    return Finding(
        Category.STALLED, Severity.FATAL,
        f"cost ${cost:.2f} reached {'the' if level == 1 else f'{level}x the'} per-rental cap of "
        f"${policy.rental_dollar_cap:.2f}",
        "Raise RENTAL_DOLLAR_CAP if this rental should run longer.", stops_run=True,
        rule="engine.dollar_cap" if level == 1 else f"engine.dollar_cap.x{level}",
    )


def deadline_finding(rental: Rental, memory: WatchMemory, policy: WatchPolicy, now: float, *,
                     last_read: float | None) -> tuple[Finding, str] | None:
    """The first provisioning deadline missed (and not declined by a human), with its name."""
    m = memory.milestones
    if Milestone.COMFYUI_READY.value in m:
        return None
    created = rental.started_at if rental.started_at is not None else rental.created_at
    running = m.get(Milestone.CONTAINER_RUNNING.value)
    ssh_ready = m.get(Milestone.SSH_READY.value)
    started = m.get(Milestone.PROVISIONING_STARTED.value)
    checks: list[tuple[bool, str, str]] = [
        (running is None and now - created >= policy.container_running_deadline, "container_running",
         f"the container is not running after {format_duration(now - created)}"),
    ]
    if running is not None and ssh_ready is None and started is None:
        checks.append((now - running >= policy.ssh_ready_deadline, "ssh_ready",
                       f"SSH never became reachable in {format_duration(now - running)} of running"))
    refused = ssh_refused_text(memory, policy, now) if running is not None and ssh_ready is None \
        and started is None else None
    if refused is not None:
        checks.append((True, "ssh_refused", refused))
    if ssh_ready is not None and started is None:
        checks.append((now - ssh_ready >= policy.provisioning_started_deadline, "provisioning_started",
                       f"provisioning did not start within {format_duration(now - ssh_ready)} of SSH"))
    checks.append((now - created >= policy.comfyui_ready_deadline, "comfyui_ready",
                   f"ComfyUI is not ready after {format_duration(now - created)}"))
    complete = Milestone.PROVISIONING_COMPLETE.value in m
    checks.append((now - created >= policy.provision_deadline and not complete, "provision_deadline",
                   f"provisioning is not complete after {format_duration(now - created)}"))
    stalled = stalled_download_text(memory, policy, last_read) if started is not None and not complete else None
    if stalled is not None:
        checks.append((True, "download_stalled", stalled))
    last = memory.last_growth
    if last is not None and last_read is not None and started is not None and not complete \
            and last_read - last >= policy.stall_timeout:
        checks.append((True, "stalled",
                       f"the provisioning log has shown no progress for {format_duration(last_read - last)}"))
    for missed, name, text in checks:
        # A declined deadline stays missed: say it once (when proposed), not at every poll.
        if missed and f"engine.deadline.{name}" not in memory.declined:
            category = Category.SSH_UNREACHABLE if name in ("ssh_ready", "ssh_refused") else Category.STALLED
            return Finding(category, Severity.FATAL, text,
                           "Nothing useful is happening on this instance; tear it down and try another host.",
                           stops_run=True, rule=f"engine.deadline.{name}"), name
    return None


def ssh_refused_text(memory: WatchMemory, policy: WatchPolicy, now: float) -> str | None:
    """Why SSH will not come, if the container log proves it; None while it may still.

    Vast says the instance runs and its SSH port is mapped, SSH has refused for
    ``ssh_refused_grace`` since, and the container log (read through the API) has shown neither
    provisioning nor any new line for as long again. Anything new there (the image still booting,
    a download advancing) keeps the instance alive: boot-time refusals are normal.
    """
    seen, novel, read = memory.ssh_port_seen_at, memory.container_novel_at, memory.container_read_at
    if seen is None or novel is None or read is None:
        return None
    grace = policy.ssh_refused_grace
    if now - seen < grace or read - novel < grace:
        return None
    return (f"SSH refused for {format_duration(now - seen)} while Vast reports the instance running with "
            f"its SSH port mapped, and the container log shows no provisioning and nothing new for "
            f"{format_duration(read - novel)}")


def stalled_download_text(memory: WatchMemory, policy: WatchPolicy, last_read: float | None) -> str | None:
    """The download whose byte counter has not moved for ``download_stall_timeout``, in words."""
    if last_read is None:
        return None
    worst: tuple[float, str, dict[str, Any]] | None = None
    for key, entry in memory.downloads.items():
        since = entry.get("since")
        if not isinstance(since, int | float):
            continue
        idle = last_read - since
        if idle >= policy.download_stall_timeout and (worst is None or idle > worst[0]):
            worst = (idle, key, entry)
    if worst is None:
        return None
    idle, key, entry = worst
    name = key.split(":", 1)[1] if ":" in key else key
    done = int(entry.get("bytes") or 0)
    total = entry.get("total")
    of = f" of {total / 1e9:.2f} GB" if isinstance(total, int) and total > 0 else ""
    tool = f" ({entry['tool']})" if entry.get("tool") else ""
    return (f"the download of {name}{tool} has not advanced for {format_duration(idle)}: stuck at "
            f"{done / 1e9:.2f} GB{of}")
