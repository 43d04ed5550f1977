"""Play one scenario end to end: the real rental service, watch engine and store in front of
the rehearsal stage (``bot.sim.stage``), a fake approver, and the clock moved poll by poll.

Every call into ``RentalService`` and ``WatchEngine`` is in this module: ``play`` builds them,
``_rent`` searches, requests and approves, ``_drive`` ticks the engine, ``_finish`` reads the
events back and destroys what a rehearsal leaves behind.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bot.clock import Clock, FakeClock
from bot.db.models import Event, Rental, RentalState
from bot.db.store import Store
from bot.provisioning.preflight import preflight
from bot.rehearsal.result import RunResult
from bot.rentals import DecisionResult, Preflight, RentalService
from bot.settings import Settings
from bot.sim.scenarios import Scenario
from bot.sim.stage import SIM_API_KEY, RehearsalStage
from bot.vast.client import DEFAULT_MIN_SPACING, NO_SPACING, VastClient
from bot.vast.models import OfferQuery
from bot.watch.cost import rental_cost
from bot.watch.engine import WatchEngine, WatchPolicy
from bot.watch.lease import LeasePolicy
from bot.watch.redact import Redactor


class _Notifier:
    """Fans engine events out to the caller's notifier (if any) and keeps them in order."""

    def __init__(self, forward: Any | None) -> None:
        self.forward = forward
        self.events: list[Event] = []

    async def notify(self, rental: Rental, event: Event) -> None:
        if self.forward is not None:
            await self.forward.notify(rental, event)
        self.events.append(event)


class ClockDriver:
    """How a run moves time: a FakeClock is advanced (instant, exact), any other clock is slept on."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    async def wait(self, seconds: float) -> None:
        if isinstance(self.clock, FakeClock):
            await self.clock.advance(seconds, step=1.0)
        else:
            await self.clock.sleep(seconds)


async def play(
    scenario: Scenario,
    clock: Clock,
    *,
    notifier: Any | None = None,
    workdir: Path | None = None,
    fast_api: bool | None = None,
    on_stage: Callable[[RehearsalStage], Awaitable[None]] | None = None,
    setting_overrides: dict[str, Any] | None = None,
) -> RunResult:
    """Play ``scenario`` end to end through the real rental service, watch engine and store.

    A fake approver approves the best offer; the engine is ticked every poll interval until the
    rental is destroyed, or has been ready for ``run_for`` seconds, or a safety limit passes. A
    rental still alive at the end is destroyed ("rehearsal over") so nothing is left behind.
    ``fast_api`` (default: with a FakeClock) removes the client's request spacing and the
    simulator's log-upload delay, so no API call sleeps on a clock nobody advances.
    """
    fast = isinstance(clock, FakeClock) if fast_api is None else fast_api
    wall0 = time.monotonic()
    stage = RehearsalStage(scenario, clock, workdir=workdir, logs_delay=0.0 if fast else 2.0)
    result = RunResult(scenario, poll_interval=15.0, workdir=stage.dir)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(stage.stop)
        settings = await stage.start(**(setting_overrides or {}))
        result.poll_interval = settings.poll_interval
        store = await Store.open(settings.database_path)
        stack.push_async_callback(store.close)
        vast = VastClient(stage.sim.base_url or "", SIM_API_KEY, clock=clock,
                          min_spacing=NO_SPACING if fast else dict(DEFAULT_MIN_SPACING))
        stack.push_async_callback(vast.aclose)
        engine = WatchEngine(store=store, vast=vast, clock=clock, policy=WatchPolicy.from_settings(settings),
                             redactor=Redactor(settings.secret_values()), notifier=_Notifier(notifier))
        engine.lease.policy = LeasePolicy.from_settings(settings)
        stack.push_async_callback(engine.stop)
        if on_stage is not None:
            await on_stage(stage)

        def service(check: Preflight | None) -> RentalService:
            return RentalService(store=store, vast=vast, clock=clock, settings=settings, engine=engine,
                                 preflight=check)

        rental = await _rent(service, stage, result)
        if rental is not None:
            result.rental = rental
            await _drive(engine, store, stage, ClockDriver(clock), result)
            await _finish(engine, store, stage, result)
    result.wall_seconds = time.monotonic() - wall0
    return result


def _preflight_for(stage: RehearsalStage, result: RunResult) -> Preflight:
    """The real preflight, aimed at the stage's gist host, keeping its report for the summary."""

    url_map = stage.hub.url_map if stage.hub is not None else None

    async def run(settings: Settings, **for_offer: Any) -> Any:
        report = await preflight(settings, gist_api_base=stage.gist.base_url, url_map=url_map, **for_offer)
        result.preflight, result.preflight_blocked = report, not report.ok
        return report

    return run


async def _rent(service: Callable[[Preflight | None], RentalService], stage: RehearsalStage,
                result: RunResult) -> Rental | None:
    """Search, request the best offer, approve it as a fake approver; None if nothing was rented.

    The approval runs the real preflight, as the Discord bot's does. When the preflight blocks
    (the scenario's script URL is broken), that is recorded and the same request is approved
    once more without it, to rehearse what the instance-side defences do.
    """
    scenario = stage.scenario
    checked = service(_preflight_for(stage, result))
    offers = await checked.search(checked.query())
    if scenario.baseline.price == "audit_pick":
        audit_query = OfferQuery(**{**checked.query().model_dump(),
                                    "excluded_countries": list(scenario.baseline.audit_excluded_countries)})
        picks = await checked.vast.search_offers(audit_query)
        result.audit_pick = picks[0].model_dump() if picks else None
    if not offers:
        result.notes.append("no offer matched the filters; nothing was rented")
        return None
    offer = offers[0]
    result.country, result.geolocation, result.dph = offer.country, offer.geolocation, offer.dph_total
    if result.audit_pick is not None and result.audit_pick.get("id") != offer.id:
        result.notes.append(
            f"the audit's filter (excluding {','.join(scenario.baseline.audit_excluded_countries)}) rents "
            f"offer {result.audit_pick.get('id')} in {result.audit_pick.get('geolocation')!r} at "
            f"${float(result.audit_pick.get('dph_total') or 0):.3f}/h; the bot rented {offer.id} in "
            f"{offer.geolocation!r} at ${offer.dph_total:.3f}/h")
    rental, approval = await checked.request(offer, requester_id=1001, requester_name="demo-user")
    decision = await checked.decide(approval.id, approve=True, user_id=2002, user_name="demo-approver",
                                    is_approver=True)
    if decision.result == DecisionResult.PREFLIGHT_FAILED:
        result.preflight_message = decision.message
        if scenario.preflight_blocks:  # the catch under rehearsal: nothing is rented, nothing spent
            result.notes.append("the preflight refused the rent; nothing was rented")
            return None
        decision = await service(None).decide(approval.id, approve=True, user_id=2002,
                                              user_name="demo-approver", is_approver=True)
    if decision.rental is None or decision.rental.instance_id is None:
        result.notes.append(f"approval did not rent: {decision.result.value}: {decision.message}")
        return None
    rental = decision.rental
    result.instance_id = rental.instance_id
    return rental


def _since(rental: Rental, ts: float) -> float:
    return ts - (rental.started_at or rental.created_at)


async def _drive(engine: WatchEngine, store: Store, stage: RehearsalStage, driver: ClockDriver,
                 result: RunResult) -> None:
    scenario = stage.scenario
    assert result.rental is not None
    rental_id = result.rental.id
    poll = result.poll_interval
    start = result.rental.started_at or stage.clock.now()
    ssh_at = 0.0 if scenario.ssh_never else scenario.ssh_at
    horizon = max(scenario.end_of_script, scenario.expect.signal_at or 0.0, ssh_at) + 8 * poll
    settings = stage.settings
    if settings is not None and settings.teardown_policy == "propose":
        horizon += settings.proposal_timeout  # a proposal nobody answers is carried out at expiry
    ready_for = scenario.run_for if scenario.run_for is not None else 2 * poll
    ready_since: float | None = None
    polled: list[float] = []  # clock time at the start of each poll, to tell drift from the bot
    while True:
        polled.append(stage.clock.now())
        await engine.tick()
        rental = await store.get_rental(rental_id)
        now = stage.clock.now()
        if rental is None or rental.state == RentalState.DESTROYED:
            break
        if rental.state in (RentalState.READY, RentalState.DEGRADED):
            ready_since = now if ready_since is None else ready_since
            if now - ready_since >= ready_for:
                break
        if now - start >= horizon:
            result.notes.append(f"stopped watching at the safety horizon ({horizon:.0f}s)")
            break
        # As the bot's engine loop does: the next poll starts one interval after this one ended.
        await driver.wait(poll)
    # Measured from the same start as the events (the engine may correct started_at while polling).
    last = await store.get_rental(rental_id) or result.rental
    result.poll_times = [_since(last, t) for t in polled]


async def _finish(engine: WatchEngine, store: Store, stage: RehearsalStage, result: RunResult) -> None:
    assert result.rental is not None
    rental = await store.get_rental(result.rental.id) or result.rental
    events = await store.events_for(rental.id)
    result.events = list(events)
    receipt_cost = 0.0
    for ev in events:
        t = _since(rental, ev.ts)
        if ev.kind == "finding":
            result.findings.append(ev.payload)
            if ev.payload.get("stops_run") and result.conclusive is None:
                result.conclusive = ev.payload
                result.knew_at = t if result.knew_at is None else result.knew_at
        elif ev.kind == "milestone" and ev.payload.get("name") == "comfyui_ready" and result.knew_at is None:
            result.knew_at = t
        elif ev.kind == "decision" and result.decision_at is None:
            result.decision_at = t
            evidence = ev.payload.get("evidence") or {}
            result.category = evidence.get("category") or ev.payload.get("reason")
        elif ev.kind == "verdict":
            result.verdict = str(ev.payload.get("verdict"))
            cause = ev.payload.get("cause") or {}
            if result.decision_at is None and cause:
                result.category = cause.get("category")
        elif ev.kind == "receipt" and result.stopped_at is None:
            result.stopped_at = t
            receipt_cost = float(ev.payload.get("cost_usd") or 0.0)
    instance_id = rental.instance_id
    if instance_id is not None:
        # SPENT is the bot's own figure (the one cost function, as on the receipt); the simulator's
        # billing is the ground truth it is checked against.
        current = await store.get_rental(rental.id) or rental
        start = rental.started_at or 0.0
        if result.stopped_at is not None:
            result.spent = receipt_cost
            result.sim_spent = stage.sim.cost_of(instance_id, at=start + result.stopped_at)
        elif result.knew_at is not None:
            result.spent = rental_cost(current, start + result.knew_at)
            result.sim_spent = stage.sim.cost_of(instance_id, at=start + result.knew_at)
        else:
            result.spent = rental_cost(current, stage.clock.now())
            result.sim_spent = stage.sim.cost_of(instance_id)
    if rental.state != RentalState.DESTROYED:
        # A good rental is the user's to keep; a rehearsal cleans up after itself.
        await engine.destroy(rental.id, reason="rehearsal over", by="demo")
    if instance_id is not None:
        result.billed_total = stage.sim.cost_of(instance_id)
        later = stage.sim.cost_of(instance_id, at=stage.clock.now() + 3600.0)
        result.billing_stopped = later - result.billed_total < 1e-9
    calls: dict[str, int] = {}
    for req in stage.sim.requests:
        calls[req.endpoint] = calls.get(req.endpoint, 0) + 1
    result.sim_calls = calls
    result.rental = await store.get_rental(rental.id) or rental
