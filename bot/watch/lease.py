"""The idle lease and the re-checks after rent: the engine's guard against instances that work but
are forgotten, and against an instance Vast places or bills differently from what was approved.

Re-checks: once Vast lists the instance, its geolocation against the deny-list and its billed
``dph_total`` against the approved quote (within a tolerance). Either breach: destroyed at once.

Lease: from ComfyUI ready, every rental has a lease (``LEASE_DURATION``). ``LEASE_WARN_BEFORE`` its
end the requester gets a notice (extend 1 h / tear down now); at the end with no answer it is torn
down. ComfyUI's ``/queue`` and ``/history`` (read over the watch's SSH connection) say whether it
does anything: idle for ``LEASE_IDLE_TIMEOUT`` gets the same notice early, and a prompt running at
the end holds the teardown until it finishes.

The rules are pure functions of a :class:`LeaseState`; :class:`LeaseKeeper` applies them for the
engine (through the ``Recorder`` and ``Teardown``). The state is rebuilt after a restart from the
rental's own lease events, so no table of its own is needed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal

from bot.clock import Clock
from bot.db.guardrails import events_by_kind
from bot.db.models import Rental, RentalState
from bot.db.store import Store
from bot.durations import format_duration
from bot.settings import Settings
from bot.vast.countries import country_of
from bot.vast.models import Instance
from bot.watch.events import EV_LEASE_EXTENDED, EV_LEASE_HELD, EV_LEASE_NOTICE, EV_RECHECK_BREACH
from bot.watch.model import Milestone
from bot.watch.records import STORE_ERRORS, Recorder
from bot.watch.ssh import COMFYUI_PORTS, ComfyActivity, SshError
from bot.watch.state import RentalWatch
from bot.watch.teardown import Teardown

log = logging.getLogger(__name__)

EXTEND_STEP = 3600.0
# ComfyUI's queue is read at most this often per rental (two small HTTP reads over SSH).
ACTIVITY_EVERY = 30.0
# A rental first seen ready longer ago than this was ready before this process started: its idle
# time so far is unknown, so the idle clock starts afresh rather than guessing.
FRESH_READY = 120.0
LEASED_STATES = frozenset({RentalState.READY, RentalState.DEGRADED})

Action = Literal["none", "notice", "hold", "expire"]


@dataclass(frozen=True, slots=True)
class LeasePolicy:
    """The lease and re-check settings."""

    duration: float = 7200.0
    max_total: float = 8 * 3600.0
    warn_before: float = 600.0
    idle_timeout: float = 1800.0  # 0: no idle check
    price_tolerance: float = 0.05
    excluded_countries: tuple[str, ...] = ("CN", "UA")

    @classmethod
    def from_settings(cls, settings: Settings) -> LeasePolicy:
        return cls(duration=settings.lease_duration, max_total=max(settings.lease_max_total, settings.lease_duration),
                   warn_before=settings.lease_warn_before, idle_timeout=settings.lease_idle_timeout,
                   price_tolerance=settings.recheck_price_tolerance,
                   excluded_countries=tuple(settings.excluded_countries))

    def lease_for(self, rental: Rental) -> float:
        """The lease a rental asked for (``request["lease_s"]``, up to the maximum), else the default."""
        asked = (rental.request or {}).get("lease_s")
        if isinstance(asked, int | float) and not isinstance(asked, bool) and asked > 0:
            return min(float(asked), self.max_total)
        return self.duration


@dataclass
class LeaseState:
    """One rental's lease, as the rules see it."""

    start: float  # ComfyUI ready
    ends_at: float
    last_activity: float
    idle_deadline: float | None = None  # set by an idle notice; cleared when work resumes
    noticed: float | None = None  # the deadline the last notice was about (its buttons' token)
    held: float | None = None  # the deadline a "running a prompt, waiting" note was posted for
    busy: bool | None = None  # None: ComfyUI's queue could not be read
    running: int = 0
    pending: int = 0
    last_prompt: str | None = None
    seen: bool = False  # ComfyUI's queue has been read once (the newest prompt is a baseline)
    read_at: float | None = None  # the last successful read
    tried_at: float | None = None
    idle_s: float = 0.0  # seconds seen idle between reads (the receipt's ``idle_s``)

    @property
    def deadline(self) -> float:
        return min(self.ends_at, self.idle_deadline if self.idle_deadline is not None else math.inf)

    @property
    def reason(self) -> str:
        return "idle" if self.idle_deadline is not None and self.idle_deadline < self.ends_at else "lease"

    @property
    def total(self) -> float:
        return self.ends_at - self.start


# ---------------------------------------------------------------- pure rules


def recheck(rental: Rental, inst: Instance, policy: LeasePolicy) -> tuple[str, str] | None:
    """``(check, why)`` if Vast's instance breaks what was approved: an excluded country, or a
    billed $/h above the quote beyond the tolerance. None if fine (or not known yet)."""
    country = country_of(inst.geolocation)
    denied = sorted({c.upper() for c in policy.excluded_countries})
    if country is not None and country in denied:
        return "geolocation", (f"Vast places the instance in {inst.geolocation!r} ({country}), an excluded "
                               f"country ({', '.join(denied)})")
    quoted, billed = rental.quoted_dph, inst.dph_total
    limit = quoted * (1 + policy.price_tolerance) + 1e-6 if quoted is not None and quoted > 0 else None
    if limit is not None and quoted is not None and billed is not None and billed > limit:
        return "price", (f"Vast bills ${billed:.4f}/h, above the approved quote of ${quoted:.4f}/h "
                         f"(+{(billed / quoted - 1):.0%}; at most +{policy.price_tolerance:.0%} is accepted)")
    return None


def observe(state: LeaseState, activity: ComfyActivity | None, now: float) -> None:
    """Fold one read of ComfyUI's queue and history into the state."""
    state.tried_at = now
    if activity is None or not activity.ok:
        state.busy, state.read_at = None, None  # a gap in reading is neither idle nor busy
        return
    new_prompt = state.seen and activity.last_prompt != state.last_prompt
    if activity.busy or new_prompt:
        state.last_activity = now
        state.idle_deadline = None  # work resumed: an idle notice no longer applies
    elif state.read_at is not None and state.busy is False:
        state.idle_s += now - state.read_at
    state.busy, state.running, state.pending = activity.busy, activity.running, activity.pending
    state.last_prompt, state.seen, state.read_at = activity.last_prompt, True, now


def idle_due(state: LeaseState, now: float, policy: LeasePolicy) -> bool:
    """Idle long enough for an early notice (and the lease itself not about to end anyway)?"""
    return (policy.idle_timeout > 0 and state.busy is False and state.idle_deadline is None
            and now - state.last_activity >= policy.idle_timeout and state.ends_at - now > policy.warn_before)


def lease_action(state: LeaseState, now: float, policy: LeasePolicy) -> Action:
    """What the lease calls for now: a notice, a hold (busy at the end), the teardown, or nothing."""
    deadline = state.deadline
    if now >= deadline:
        if state.busy:
            return "hold" if state.held != deadline else "none"
        return "expire"
    if now >= deadline - policy.warn_before and state.noticed != deadline:
        return "notice"
    return "none"


def extension(state: LeaseState, now: float, policy: LeasePolicy, *, token: int,
              is_approver: bool) -> tuple[float | None, str]:
    """``(new end, "")`` for one "Extend 1 h" click on the notice ``token``, or ``(None, why not)``."""
    if state.noticed is None or int(state.noticed) != token or int(state.deadline) != token:
        return None, "This lease notice no longer applies (already answered, or ComfyUI got busy again)."
    if state.reason == "idle":
        new_end = max(state.ends_at, now + EXTEND_STEP)
    else:
        new_end = max(state.ends_at, now) + EXTEND_STEP
    total = new_end - state.start
    if total > policy.max_total + 1e-6 and not is_approver:
        return None, (f"Extending would make the lease {format_duration(total)}, past the maximum of "
                      f"{format_duration(policy.max_total)}: an approver must click Extend.")
    return new_end, ""


# ---------------------------------------------------------------- the engine's collaborator


@dataclass(frozen=True, slots=True)
class LeaseAnswer:
    ok: bool
    message: str
    ends_at: float | None = None
    total_s: float | None = None


class LeaseKeeper:
    """Applies the re-checks and the lease to each rental the engine steps."""

    def __init__(self, *, store: Store, clock: Clock, recorder: Recorder, teardown: Teardown,
                 watches: MutableMapping[int, RentalWatch], policy: LeasePolicy | None = None) -> None:
        self.store = store
        self.clock = clock
        self.rec = recorder
        self.teardown = teardown
        self.watches = watches
        self.policy = policy or LeasePolicy()
        self.states: dict[int, LeaseState] = {}
        self.rechecked: set[int] = set()
        recorder.receipt_fields.append(self.receipt_fields)

    def receipt_fields(self, rental: Rental) -> Mapping[str, Any]:
        state = self.states.get(rental.id)
        return {"idle_s": round(state.idle_s, 1)} if state is not None else {}

    async def step(self, watch: RentalWatch, inst: Instance, now: float) -> None:
        """At a poll that shows the instance: re-check it once, then apply the lease."""
        if watch.memory.decided or watch.destroy_reason is not None:
            return
        rental = watch.rental
        if rental.id not in self.rechecked:
            breach = recheck(rental, inst, self.policy)
            if breach is not None:
                await self._breach(watch, inst, *breach)
                return
            if inst.dph_total is not None:
                self.rechecked.add(rental.id)
        if rental.state not in LEASED_STATES or not watch.reached(Milestone.COMFYUI_READY):
            return
        state = self.states.get(rental.id) or await self._load(watch, now)
        if state is None:
            return
        if state.tried_at is None or now - state.tried_at >= ACTIVITY_EVERY or now >= state.deadline:
            observe(state, await self._read(watch), now)
        if idle_due(state, now, self.policy):
            state.idle_deadline = now + self.policy.warn_before
        action = lease_action(state, now, self.policy)
        if action == "notice":
            state.noticed = state.deadline
            await self.rec.emit(rental, EV_LEASE_NOTICE, {
                "reason": state.reason, "deadline": state.deadline, "requester_id": rental.requester_id,
                "idle_s": round(now - state.last_activity, 1), "busy": state.busy})
        elif action == "hold":
            state.held = state.deadline
            await self.rec.emit(rental, EV_LEASE_HELD, {"deadline": state.deadline, "running": state.running,
                                                        "pending": state.pending})
        elif action == "expire":
            if state.reason == "idle":
                why = (f"idle lease: ComfyUI ran nothing for {format_duration(now - state.last_activity)} "
                       "and nobody answered the notice")
            else:
                why = f"lease of {format_duration(state.total)} ended and nobody extended it"
            await self.teardown.destroy_now(watch, reason=why, by="lease")

    def forget(self, rental_id: int) -> None:
        self.states.pop(rental_id, None)
        self.rechecked.discard(rental_id)

    async def extend(self, rental_id: int, *, token: int, by: str, by_id: int, is_approver: bool) -> LeaseAnswer:
        """One "Extend 1 h" click (the caller checked the clicker may answer for the rental)."""
        watch = self.watches.get(rental_id)
        if watch is None:
            return LeaseAnswer(False, f"Rental #{rental_id} is not running any more; nothing to extend.")
        async with watch.lock:
            state = self.states.get(rental_id)
            if state is None and watch.rental.state in LEASED_STATES:
                state = await self._load(watch, self.clock.now())  # clicked before the first poll since a restart
            if state is None or watch.destroy_reason is not None or watch.memory.decided:
                return LeaseAnswer(False, f"Rental #{rental_id} is being torn down or has no lease; "
                                          "nothing to extend.")
            now = self.clock.now()
            new_end, why = extension(state, now, self.policy, token=token, is_approver=is_approver)
            if new_end is None:
                return LeaseAnswer(False, why)
            approver = new_end - state.start > self.policy.max_total + 1e-6
            state.ends_at, state.idle_deadline, state.held = new_end, None, None
            state.last_activity = now  # a person says it is in use: the idle clock starts again
            await self.rec.emit(watch.rental, EV_LEASE_EXTENDED, {
                "ends_at": new_end, "by": by, "by_id": by_id, "total_s": round(state.total, 1),
                "approver": approver})
            await self.rec.save(watch)
        self.rec.outbox.wake()
        return LeaseAnswer(True, f"Lease extended by {format_duration(EXTEND_STEP)} by {by}.", new_end, state.total)

    # ------------------------------------------------------------------ internals
    async def _breach(self, watch: RentalWatch, inst: Instance, check: str, why: str) -> None:
        rental = watch.rental
        await self.rec.emit(rental, EV_RECHECK_BREACH, {
            "check": check, "text": why, "geolocation": inst.geolocation, "dph_total": inst.dph_total,
            "quoted_dph": rental.quoted_dph, "tolerance": self.policy.price_tolerance})
        if rental.machine_id is not None:
            # A machine placed or billed otherwise than offered is one to avoid, like a failed one.
            try:
                await self.store.record_host_outcome(
                    machine_id=rental.machine_id, host_id=rental.host_id, geolocation=inst.geolocation,
                    outcome="failed", reason=f"re-check after rent ({check}): {why}", now=self.clock.now(),
                    rental_id=rental.id)
            except STORE_ERRORS as exc:  # the destroy below matters more than this row
                self.rec.alarms.store_failed(exc)
        await self.teardown.destroy_now(watch, reason=f"re-check after rent ({check}): {why}",
                                        by="re-check after rent")

    async def _read(self, watch: RentalWatch) -> ComfyActivity | None:
        session = watch.session
        read = getattr(session, "comfyui_activity", None)
        if read is None:
            return None
        port = (watch.memory.comfy_pending or {}).get("port")
        ports = COMFYUI_PORTS if not isinstance(port, int) else (port, *[p for p in COMFYUI_PORTS if p != port])
        try:
            activity = await read(ports=ports)
        except (SshError, OSError) as exc:  # the collector handles the connection; here it is unknown
            log.info("rental %s: ComfyUI's queue could not be read: %s", watch.rental.id, exc)
            return None
        return activity if isinstance(activity, ComfyActivity) else None

    async def _load(self, watch: RentalWatch, now: float) -> LeaseState | None:
        """The lease as this rental's events left it (after a restart), or a new one from ready."""
        ready = watch.memory.milestones.get(Milestone.COMFYUI_READY.value)
        if ready is None:
            return None
        rental = watch.rental
        fresh = now - ready <= FRESH_READY
        state = LeaseState(start=ready, ends_at=ready + self.policy.lease_for(rental),
                           last_activity=ready if fresh else now)
        if not fresh:
            try:
                kinds = [str(EV_LEASE_NOTICE), str(EV_LEASE_EXTENDED), str(EV_LEASE_HELD)]
                events = (await events_by_kind(self.store, [rental.id], kinds)).get(rental.id, [])
            except STORE_ERRORS as exc:
                self.rec.alarms.store_failed(exc)
                return None  # tried again next poll: a lease rebuilt wrong could end too soon
            for event in events:
                p = event.payload
                if event.kind == EV_LEASE_EXTENDED:
                    state.ends_at, state.idle_deadline, state.held = float(p["ends_at"]), None, None
                    state.last_activity = max(state.last_activity, event.ts)
                elif event.kind == EV_LEASE_NOTICE:
                    state.noticed = float(p["deadline"])
                    if p.get("reason") == "idle":
                        state.idle_deadline = state.noticed
                elif event.kind == EV_LEASE_HELD:
                    state.held = float(p["deadline"])
        self.states[rental.id] = state
        for rid in [r for r in self.states if r not in self.watches]:
            self.forget(rid)  # rentals that ended: their leases are over
        return state
