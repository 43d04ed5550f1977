"""The provision watch engine: one poll loop over every live rental.

Each poll lists the account's instances once (one paginated call per 25 instances), then for
each rental: instance milestones, an incremental SSH tail of ``PROVISION_LOG_PATH`` (or the
container-log API when SSH is unreachable past the boot grace), classification, deadlines,
cost-to-date and, when something is conclusive, a teardown decision. Every event is stored with
a per-rental sequence number *before* it is handed to the notifier, and marked once delivered,
so a restart neither loses nor repeats a post. The engine knows nothing about Discord.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from bot.clock import Clock
from bot.db.models import ACTIVE_STATES, Approval, ApprovalKind, ApprovalStatus, Event, Rental, RentalState
from bot.db.store import Store
from bot.durations import format_duration
from bot.vast.client import VastClient
from bot.vast.errors import VastError
from bot.vast.models import Instance
from bot.watch.classifier import Classifier, load_rules
from bot.watch.cost import CostMeter, crossed_steps
from bot.watch.events import (
    EV_APPROVAL,
    EV_COST,
    EV_DECISION,
    EV_FINDING,
    EV_INFO,
    EV_LOG_ROTATED,
    EV_MILESTONE,
    EV_NOISE,
    EV_PROPOSAL,
    EV_RECEIPT,
    EV_STATE,
    EV_VERDICT,
    Notifier,
)
from bot.watch.lines import LineAssembler
from bot.watch.milestones import MilestoneParser
from bot.watch.model import Category, Finding, Milestone, MilestoneHit, Severity, Verdict
from bot.watch.redact import Redactor
from bot.watch.ssh import HostKeyChanged, SshFatal, SshTransient, best_alternative_log, endpoint_for
from bot.watch.state import RentalWatch, SshConnector, WatchMemory, WatchPolicy

log = logging.getLogger(__name__)

# Re-exported: the cogs, the rent service and the demo import these from here.
__all__ = [
    "EV_APPROVAL", "EV_COST", "EV_DECISION", "EV_FINDING", "EV_INFO", "EV_LOG_ROTATED", "EV_MILESTONE",
    "EV_NOISE", "EV_PROPOSAL", "EV_RECEIPT", "EV_STATE", "EV_VERDICT", "LABEL_PREFIX", "WATCHED_STATES",
    "Notifier", "RentalWatch", "SshConnector", "WatchEngine", "WatchMemory", "WatchPolicy",
]

# The engine keeps an eye on every rental that may be billing.
WATCHED_STATES = ACTIVE_STATES

class WatchEngine:
    """Watches every live rental; emits events; decides and carries out teardowns."""

    def __init__(
        self,
        *,
        store: Store,
        vast: VastClient,
        clock: Clock,
        policy: WatchPolicy,
        redactor: Redactor | None = None,
        classifier: Classifier | None = None,
        ssh_connect: SshConnector | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.store = store
        self.vast = vast
        self.clock = clock
        self.policy = policy
        self.redactor = redactor or Redactor({})
        self.classifier = classifier or Classifier(load_rules())
        if ssh_connect is None:
            from bot.watch.ssh import SshLogSession

            ssh_connect = SshLogSession.connect
        self.ssh_connect = ssh_connect
        self.notifier = notifier
        self.watches: dict[int, RentalWatch] = {}
        self._task: asyncio.Task[None] | None = None
        self._pump_lock = asyncio.Lock()
        self.on_destroyed: list[Callable[[Rental], Awaitable[None]]] = []
        # Rentals whose create call is in flight in this process (the rent service keeps this):
        # their instance id is not known yet, and their label must not be taken for missing.
        self.creating: set[int] = set()
        self.ticks = 0

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Re-attach every live rental from its stored offset and start the poll loop."""
        await self.reattach()
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="watch-engine")

    async def reattach(self) -> int:
        for rental in await self.store.list_rentals(states=WATCHED_STATES, limit=10_000):
            await self.attach(rental)
        await self.pump()
        return len(self.watches)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for watch in self.watches.values():
            await self._close_session(watch)

    async def attach(self, rental: Rental) -> RentalWatch:
        """Start (or resume) watching ``rental``."""
        if rental.id in self.watches:
            self.watches[rental.id].rental = rental
            return self.watches[rental.id]
        state = await self.store.get_watch_state(rental.id)
        memory = WatchMemory.from_json(state.data if state else None)
        watch = RentalWatch(
            rental, memory,
            log_offset=state.log_offset if state else 0,
            host_key=state.host_key if state else None,
            classifier=self.classifier, redactor=self.redactor,
        )
        if watch.log_offset > 0:
            watch.replay_to, watch.log_offset = watch.log_offset, 0
        self.watches[rental.id] = watch
        return watch

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # a poll must never kill the loop: report and go on
                log.exception("watch poll failed; retrying at the next interval")
            await self.clock.sleep(self.policy.poll_interval)

    # ------------------------------------------------------------------ one poll
    async def tick(self) -> None:
        """One poll: list instances once, step every watch, expire proposals, deliver events."""
        self.ticks += 1
        await self._expire_approvals()
        # Idle, the account is still listed once a minute or so: the orphan sweep needs it.
        if self.watches or self.ticks % IDLE_LIST_EVERY == 1:
            try:
                instances = {inst.id: inst for inst in await self.vast.list_instances()}
                listed = True
            except VastError as exc:
                log.warning("instance list failed: %s", exc)
                instances, listed = {}, False
            watches = list(self.watches.values())
            results = await asyncio.gather(
                *(self._step_safely(w, instances, listed) for w in watches), return_exceptions=True
            )
            for watch, result in zip(watches, results, strict=True):
                if isinstance(result, BaseException):
                    log.error("watch of rental %s failed: %r", watch.rental.id, result)
            if listed:
                await self._sweep_orphans(instances)
        await self.pump()

    async def _sweep_orphans(self, instances: dict[int, Instance]) -> None:
        """Destroy instances that carry the label of one of our rentals that is over.

        A create whose answer was lost and whose label Vast listed only later, or a destroy Vast
        undid: the rental is closed (create_failed, destroyed, ...) yet the instance bills. It is
        ours by its label, and nobody wants it. Instances with no rental of ours are left alone
        (they are listed as unknown in /status).
        """
        watched = {w.rental.instance_id for w in self.watches.values()} | {
            w.instance.id for w in self.watches.values() if w.instance is not None}
        for inst in instances.values():
            if inst.id in watched or not inst.label or not inst.label.startswith(LABEL_PREFIX):
                continue
            rental = await self.store.get_rental_by_label(inst.label)
            if rental is None or rental.state not in ORPHANING_STATES:
                continue
            try:
                gone = await self.vast.destroy_instance(inst.id)
            except VastError as exc:
                log.warning("orphan instance %s (rental %s) not destroyed yet: %s", inst.id, rental.id, exc)
                continue
            cost = CostMeter(inst.dph_total or 0.0, inst.start_date or self.clock.now()).cost_at(self.clock.now())
            await self.store.append_event(rental.id, kind=EV_FINDING, ts=self.clock.now(), payload={
                "line": None, "category": Category.UNKNOWN.value, "severity": Severity.ERROR.value,
                "text": f"instance {inst.id} carries this rental's label but the rental is {rental.state.value}; "
                        f"it was billing (about ${cost:.2f}) and has been "
                        + ("destroyed" if gone else "asked to be destroyed"),
                "advice": "Nothing to do; the bot destroys instances it rented but no longer watches.",
                "stops_run": False, "rule": "engine.orphan_destroyed",
            })

    async def _step_safely(self, watch: RentalWatch, instances: dict[int, Instance], listed: bool) -> None:
        async with watch.lock:
            try:
                await self._step(watch, instances, listed)
            finally:
                await self._save(watch)

    async def _step(self, watch: RentalWatch, instances: dict[int, Instance], listed: bool) -> None:
        rental = await self.store.get_rental(watch.rental.id)
        if rental is None or rental.state not in WATCHED_STATES:
            self.watches.pop(watch.rental.id, None)
            await self._close_session(watch)
            return
        watch.rental = rental
        now = self.clock.now()
        if rental.instance_id is None:
            if not await self._find_by_label(watch, instances, listed, now):
                return
            rental = watch.rental
            assert rental.instance_id is not None
        inst = instances.get(rental.instance_id)
        if inst is None and listed:
            try:
                inst = await self.vast.get_instance(rental.instance_id)
            except VastError as exc:
                # Not being able to ask is not an answer: only Vast saying "no such instance" is.
                log.warning("rental %s: instance %s missing from the list and its look-up failed: %s",
                            rental.id, rental.instance_id, exc)
                return
            if inst is None:
                await self._gone(watch, now)
                return
        if inst is None:
            return  # the list failed this poll; try again next time
        watch.instance = inst

        if rental.state == RentalState.TEARING_DOWN:
            await self._destroy(watch, reason=rental.state_reason or "teardown", by="engine (retry)")
            return

        await self._cost(watch, inst, now)
        if watch.memory.decided:
            return

        status = (inst.actual_status or "").lower()
        await self._milestone(watch, Milestone.INSTANCE_CREATED, {"instance_id": inst.id})
        if status not in ("offline", "unknown"):
            watch.memory.host_lost_since = None
        if status == "running":
            await self._milestone(watch, Milestone.CONTAINER_RUNNING, {"status_msg": inst.status_msg})
            await self._collect(watch, inst, now)
        elif status in ("exited", "offline", "unknown") and watch.reached(Milestone.CONTAINER_RUNNING):
            # A missed host heartbeat (unknown) or a host reconnecting (offline, billed nothing) is
            # often over by the next poll: only an exited container is conclusive at once.
            if status != "exited" and watch.memory.host_lost_since is None:
                watch.memory.host_lost_since = now
            lost = watch.memory.host_lost_since
            if lost is None or now - lost >= self.policy.host_lost_grace:
                await self._finding(watch, Finding(
                Category.CONFIG, Severity.FATAL,
                    f"instance status is {status!r}: {inst.status_msg or 'no message'}",
                    "The container stopped. Destroy it and rent again (another host if it repeats).",
                    stops_run=True, rule="engine.container_stopped",
                ))
        if not watch.memory.decided:
            await self._deadlines(watch, now)

    async def _find_by_label(self, watch: RentalWatch, instances: dict[int, Instance], listed: bool,
                             now: float) -> bool:
        """A rental without an instance id (a crash or a lost answer during the create): look for
        the instance carrying its label, which bills whether or not the database knows its id.

        True once the instance is adopted (the step goes on with it).
        """
        rental = watch.rental
        if rental.id in self.creating:
            return False  # the rent service is still waiting for Vast's answer
        if rental.state == RentalState.TEARING_DOWN:
            await self._destroy(watch, reason=rental.state_reason or "teardown", by="engine (retry)")
            return False
        if not listed:
            return False
        found = next((i for i in instances.values() if i.label == rental.label), None)
        if found is None:
            if watch.memory.label_missing_since is None:
                watch.memory.label_missing_since = now
            elif now - watch.memory.label_missing_since >= self.policy.create_reconcile_grace:
                await self._transition(watch, RentalState.CREATE_FAILED, reason=(
                    f"no instance carries the label {rental.label} "
                    f"{format_duration(now - watch.memory.label_missing_since)} after the create; nothing was rented"))
            return False
        watch.memory.label_missing_since = None
        log.warning("rental %s: instance %s found by its label %s; watching it", rental.id, found.id, rental.label)
        watch.rental = await self.store.update_rental(
            rental.id, now=now, instance_id=found.id, started_at=found.start_date or rental.started_at or now,
            dph_total=found.dph_total if found.dph_total is not None else rental.quoted_dph,
        )
        if rental.state == RentalState.CREATING:
            await self._transition(watch, RentalState.PROVISIONING,
                                   reason=f"instance {found.id} found by its label {rental.label}")
        return True

    # ------------------------------------------------------------------ collection
    async def _collect(self, watch: RentalWatch, inst: Instance, now: float) -> None:
        running_since = watch.memory.milestones.get(Milestone.CONTAINER_RUNNING.value, now)
        if watch.session is None and now >= watch.next_ssh_attempt and not watch.memory.fallback_only:
            await self._connect(watch, inst, now, running_since)
            if (watch.session is not None and watch.memory.fallback_tail and watch.log_offset == 0
                    and not watch.replay_to):
                # SSH is back after the container log was read: the file holds the same lines.
                # Catch up through the container log once more and tail the file from its end,
                # so nothing is analysed (and posted) twice.
                await self._container_logs(watch, now)
                try:
                    probe = await watch.session.read_new(self.policy.log_path, 0, max_bytes=1)
                except SshTransient:
                    await self._close_session(watch)
                    return
                watch.log_offset = 0 if probe.missing else probe.size
        if watch.session is not None:
            await self._tail(watch, now)
            if watch.memory.comfy_pending and watch.session is not None:
                await self._confirm_comfyui(watch)
            if watch.session is not None and watch.reached(Milestone.COMFYUI_READY):
                await self._scan_service_logs(watch)
        elif watch.memory.fallback:
            await self._container_logs(watch, now)

    async def _connect(self, watch: RentalWatch, inst: Instance, now: float, running_since: float) -> None:
        endpoint = endpoint_for(inst)
        if endpoint is None:
            return  # ports not published yet
        key_path = self.policy.ssh_key_path
        try:
            session = await self.ssh_connect(
                endpoint, key_path=key_path, known_host_key=watch.host_key,
                connect_timeout=self.policy.connect_timeout,
            )
        except HostKeyChanged as exc:
            await self._finding(watch, Finding(
                Category.CONFIG, Severity.ERROR, f"SSH host key changed for this instance: {exc}",
                "Someone may be intercepting the connection. The bot stopped using SSH for this "
                "instance and reads container logs instead.", rule="engine.host_key_changed",
            ))
            watch.memory.fallback = True
            watch.memory.fallback_only = True
            return
        except SshFatal as exc:
            await self._finding(watch, Finding(
                Category.AUTH, Severity.ERROR, f"SSH login refused: {exc}",
                "Add the public half of SSH_KEY_PATH to your Vast account (Account > SSH keys). "
                "The bot reads container logs meanwhile.", rule="engine.ssh_auth",
            ))
            watch.memory.fallback = True
            watch.memory.fallback_only = True
            return
        except SshTransient as exc:
            watch.ssh_failures += 1
            if watch.memory.ssh_fail_since is None:
                watch.memory.ssh_fail_since = now
            delay = min(self.policy.poll_interval, 2.0 * (2 ** min(watch.ssh_failures, 6)))
            watch.next_ssh_attempt = now + delay
            # Refused/reset/timeouts during boot are expected: only past the grace is it news.
            if now - running_since >= self.policy.ssh_boot_grace and not watch.memory.ssh_unreachable_reported:
                watch.memory.ssh_unreachable_reported = True
                watch.memory.fallback = True
                await self._finding(watch, Finding(
                    Category.SSH_UNREACHABLE, Severity.WARN,
                    f"SSH to {endpoint.host}:{endpoint.port} still fails after "
                    f"{format_duration(now - running_since)} of running: {exc}",
                    "Reading the container log through the Vast API instead; the watch goes on.",
                    rule="engine.ssh_unreachable",
                ))
            return
        watch.session = session
        watch.ssh_failures = 0
        watch.memory.ssh_fail_since = None
        seen_key = getattr(session, "host_key", None)
        if seen_key and seen_key != watch.host_key:
            watch.host_key = seen_key
        await self._milestone(watch, Milestone.SSH_READY, {"endpoint": f"{endpoint.host}:{endpoint.port}"})

    async def _replay(self, watch: RentalWatch) -> None:
        """Rebuild the analysis from the bytes the previous process already analysed (no events)."""
        target, offset, lineno = watch.replay_to, 0, 0
        assembler = LineAssembler()
        while offset < target:
            chunk = await watch.session.read_new(self.policy.log_path, offset,
                                                 max_bytes=min(1 << 20, target - offset))
            if chunk.missing or chunk.size < target or not chunk.data:
                break  # the file shrank or vanished meanwhile: the normal tail reports it
            offset = chunk.new_offset
            for line in assembler.feed(chunk.data):
                lineno += 1
                watch.analysis.feed_line(line, lineno)
        watch.replay_to = 0
        watch.log_offset = target
        if offset == target:
            watch.assembler = assembler

    async def _tail(self, watch: RentalWatch, now: float) -> None:
        try:
            if watch.replay_to:
                await self._replay(watch)
            chunk = await watch.session.read_new(self.policy.log_path, watch.log_offset)
        except SshTransient as exc:
            log.info("rental %s: SSH read failed (%s); reconnecting next poll", watch.rental.id, exc)
            await self._close_session(watch)
            return
        if chunk.missing:
            await self._log_missing(watch, now)
            return
        watch.memory.log_missing_since = None
        if watch.memory.last_growth is None:
            watch.memory.last_growth = now
        if chunk.rotated:
            watch.memory.rotations += 1
            watch.assembler = LineAssembler()
            await self._emit(watch.rental, EV_LOG_ROTATED, {
                "path": self.policy.log_path, "previous_offset": watch.log_offset, "size": chunk.size,
                "text": "the provisioning log shrank (rotated or truncated); reading it again from the start",
            })
        watch.log_offset = chunk.new_offset
        if chunk.data:
            if await self._lines(watch, watch.assembler.feed(chunk.data)):
                watch.memory.last_growth = now
        watch.last_read = now

    async def _log_missing(self, watch: RentalWatch, now: float) -> None:
        if watch.memory.log_missing_since is None:
            watch.memory.log_missing_since = now
            return
        if now - watch.memory.log_missing_since < self.policy.missing_grace:
            return
        try:
            candidates = await watch.session.list_candidate_logs()
        except SshTransient:
            await self._close_session(watch)
            return
        configured = self.policy.log_path
        best = best_alternative_log(configured, candidates)
        if best is None or "provision" not in best.path.rsplit("/", 1)[-1].lower():
            # Only the image's own service logs (caddy, portal...): our script has not started yet
            # (a slow script host, curl retrying). Not conclusive; the provisioning-started
            # deadline bounds the wait.
            return
        names = [best.path] + [c.path for c in candidates if c.path != best.path]
        text = (f"PROVISION_LOG_PATH {configured} does not exist on the instance; "
                f"logs that do exist: {', '.join(names[:6])}")
        advice = (f"The script writes {best.path} but the bot reads {configured}: the script that ran "
                  "is not ours or ignores PROV_LOG_PATH. Fix the script or PROVISION_LOG_PATH; "
                  "this instance is not provisioning as intended.")
        category = Category.CONFIG
        await self._finding(watch, Finding(category, Severity.FATAL, text, advice, stops_run=True,
                                           rule="engine.log_missing"), extra={"candidates": names,
                                                                              "configured": configured})

    async def _container_logs(self, watch: RentalWatch, now: float) -> None:
        if watch.rental.instance_id is None:
            return
        try:
            text = await self.vast.request_logs(watch.rental.instance_id)
        except VastError as exc:
            log.info("rental %s: container logs unavailable: %s", watch.rental.id, exc)
            return
        lines = text.splitlines()
        new = _new_suffix(watch.memory.fallback_tail, lines)
        watch.memory.fallback_tail = lines[-50:]
        if new:
            if await self._lines(watch, new):
                watch.memory.last_growth = now
        watch.last_read = now

    async def _lines(self, watch: RentalWatch, lines: Iterable[str]) -> bool:
        """Analyse new lines; True if any of them is progress (for the stall clock).

        Consecutive non-fatal findings of one category (a wheel build failing prints five error
        lines) become one post with all their lines, not five posts on someone's phone.
        """
        progressed = False
        group: list[Finding] = []
        for line in lines:
            watch.memory.lineno += 1
            outcome = watch.analysis.feed_line(line, watch.memory.lineno)
            progressed = self._is_progress(watch, outcome) or progressed
            if outcome.milestones:
                await self._flush_group(watch, group)
            for hit in outcome.milestones:
                await self._log_milestone(watch, hit)
            finding = outcome.finding
            if finding is not None and finding.category == Category.PLATFORM_NOISE:
                key = finding.category.value
                watch.memory.noise[key] = watch.memory.noise.get(key, 0) + 1
            elif finding is not None:
                stops = finding.stops_run or finding.severity == Severity.FATAL
                if group and (stops or (finding.category, finding.severity) !=
                              (group[0].category, group[0].severity)):
                    await self._flush_group(watch, group)
                if stops:
                    await self._finding(watch, finding)
                else:
                    group.append(finding)
            if watch.memory.decided:
                break
        await self._flush_group(watch, group)
        await self._noise_summary(watch)
        await self._update_verdict(watch)
        return progressed

    async def _flush_group(self, watch: RentalWatch, group: list[Finding]) -> None:
        if not group:
            return
        first, rest = group[0], group[1:]
        group.clear()
        if not rest:
            await self._finding(watch, first)
            return
        shown = [first, *rest[:7]]
        text = "\n".join(f.text for f in shown)
        if len(rest) > 7:
            text += f"\n… and {len(rest) - 7} more line(s) like these"
        merged = Finding(first.category, first.severity, text, first.advice, line=first.line,
                         stops_run=False, rule=first.rule)
        await self._finding(watch, merged, extra={"lines": [f.line for f in [first, *rest]],
                                                  "similar": len(rest)})

    @staticmethod
    def _is_progress(watch: RentalWatch, outcome: Any) -> bool:
        # Growth is not progress (reference §2 J): platform noise, our heartbeat and a download
        # whose byte counter stopped would otherwise keep a hung run from ever looking stalled.
        if outcome.noise:
            return False
        event = outcome.event
        if event is None:
            return True
        if event.ev == "heartbeat":
            return False
        if event.ev == "model.progress":
            name = str(event.get("name", ""))
            try:
                done = int(event.get("bytes") or 0)
            except (TypeError, ValueError):
                return False
            before = watch.memory.progress_bytes.get(name)
            watch.memory.progress_bytes[name] = max(done, before or 0)
            return before is None or done > before
        return True

    async def _log_milestone(self, watch: RentalWatch, hit: MilestoneHit) -> None:
        if hit.name in HELD_UNTIL_READY and not watch.reached(Milestone.COMFYUI_READY):
            # A tunnel URL exists before ComfyUI answers (it shows a loading page): hold it.
            if not any(h["name"] == hit.name.value for h in watch.memory.held):
                watch.memory.held.append({"name": hit.name.value, "line": hit.line, **hit.detail})
            return
        if hit.name == Milestone.COMFYUI_READY:
            # A log line alone is not readiness: confirm /system_stats over SSH first.
            if not watch.reached(Milestone.COMFYUI_READY):
                watch.memory.comfy_pending = {"line": hit.line, **hit.detail}
                if watch.session is not None:
                    await self._confirm_comfyui(watch)
            return
        await self._milestone(watch, hit.name, {"line": hit.line, **hit.detail})
        if (hit.name == Milestone.PROVISIONING_COMPLETE and not watch.reached(Milestone.COMFYUI_READY)
                and watch.memory.comfy_pending is None):
            # ComfyUI's own "To see the GUI" line goes to the container log, never to our script's
            # log: once provisioning is complete, probe /system_stats every poll until it answers.
            watch.memory.comfy_pending = {"after": Milestone.PROVISIONING_COMPLETE.value}
            if watch.session is not None:
                await self._confirm_comfyui(watch)

    async def _confirm_comfyui(self, watch: RentalWatch) -> None:
        pending = watch.memory.comfy_pending or {}
        ports: tuple[int, ...] = (18188, 8188)
        if isinstance(pending.get("port"), int | str) and str(pending.get("port")).isdigit():
            port = int(pending["port"])
            ports = (port, *[p for p in ports if p != port])
        try:
            check = await watch.session.check_comfyui(ports=ports)
        except SshTransient:
            await self._close_session(watch)
            return
        if check.ok:
            watch.memory.comfy_pending = None
            detail = {k: v for k, v in pending.items() if k != "needs_http_check"}
            detail["confirmed"] = "GET /system_stats answered 200 with devices"
            await self._milestone(watch, Milestone.COMFYUI_READY, detail)
            held, watch.memory.held = watch.memory.held, []
            for item in held:
                await self._milestone(watch, Milestone(item.pop("name")), item)
            await self._update_verdict(watch)

    async def _scan_service_logs(self, watch: RentalWatch) -> None:
        """Read the tunnel manager's log for the tunnel and portal URLs once ComfyUI answers.

        Those lines come from supervisor programs, never from our script's log. Bounded: it stops
        when both are known or after 40 polls.
        """
        if (watch.reached(Milestone.TUNNEL_READY) and watch.reached(Milestone.PORTAL_READY)) \
                or watch.memory.service_polls >= 40:
            return
        watch.memory.service_polls += 1
        parser = MilestoneParser()
        for path in SERVICE_LOGS:
            offset = watch.memory.service_offsets.get(path, 0)
            try:
                chunk = await watch.session.read_new(path, offset, max_bytes=256 * 1024)
            except SshTransient:
                await self._close_session(watch)
                return
            if chunk.missing:
                continue
            watch.memory.service_offsets[path] = chunk.new_offset - _partial(chunk.data)
            text = chunk.data[: len(chunk.data) - _partial(chunk.data)]
            for number, line in enumerate(LineAssembler().feed(text), start=1):
                for hit in parser.feed(self.redactor.redact(line), number):
                    if hit.name in HELD_UNTIL_READY:
                        await self._milestone(watch, hit.name, {"source": path, **hit.detail})

    # ------------------------------------------------------------------ events
    async def _milestone(self, watch: RentalWatch, name: Milestone, detail: dict[str, Any]) -> None:
        if watch.reached(name):
            return
        now = self.clock.now()
        watch.memory.milestones[name.value] = now
        payload: dict[str, Any] = {"name": name.value, **{k: v for k, v in detail.items() if v is not None}}
        payload.update(self._progress(watch, now))
        if name == Milestone.TUNNEL_READY and detail.get("url"):
            await self.store.update_rental(watch.rental.id, now=now, tunnel_url=str(detail["url"]))
        if name == Milestone.COMFYUI_READY and detail.get("url"):
            await self.store.update_rental(watch.rental.id, now=now, comfyui_url=str(detail["url"]))
        await self._emit(watch.rental, EV_MILESTONE, payload)

    def _progress(self, watch: RentalWatch, now: float) -> dict[str, Any]:
        start = watch.rental.started_at or watch.rental.created_at
        cost = self._cost_now(watch, now)
        return {"elapsed_s": round(now - start, 1), "cost_usd": round(cost, 4)}

    async def _finding(self, watch: RentalWatch, finding: Finding, extra: dict[str, Any] | None = None) -> None:
        text = self.redactor.redact(finding.text)
        payload = {
            **finding.to_dict(), "text": text, "stops_run": finding.stops_run, "rule": finding.rule,
            **(extra or {}),
        }
        watch.memory.findings.append({k: payload[k] for k in ("category", "severity", "line", "text", "stops_run")})
        await self._emit(watch.rental, EV_FINDING, payload)
        if finding.stops_run or finding.severity == Severity.FATAL:
            cause = watch.analysis.cause() if finding.rule and not finding.rule.startswith("engine.") else None
            await self._decide(watch, reason=finding.category.value, finding=cause or finding,
                               key=finding.rule or finding.category.value)

    async def _noise_summary(self, watch: RentalWatch) -> None:
        total = sum(watch.memory.noise.values())
        # Summarise noise as a count, at most once per 25 new lines of it.
        if total and (watch.memory.noise_posted == 0 or total - watch.memory.noise_posted >= 25):
            watch.memory.noise_posted = total
            await self._emit(watch.rental, EV_NOISE, {
                "counts": dict(watch.memory.noise), "total": total,
                "text": f"{total} harmless platform line(s) ignored (e.g. 'remote port forwarding failed')",
            })

    async def _update_verdict(self, watch: RentalWatch) -> None:
        verdict = self._verdict(watch)
        if verdict.value == watch.memory.verdict:
            return
        watch.memory.verdict = verdict.value
        now = self.clock.now()
        if verdict in (Verdict.READY, Verdict.DEGRADED):
            target = RentalState.READY if verdict == Verdict.READY else RentalState.DEGRADED
            await self._transition(watch, target, reason=f"verdict {verdict.value}")
        cause = watch.analysis.cause()
        await self._emit(watch.rental, EV_VERDICT, {
            "verdict": verdict.value,
            "cause": None if cause is None else {"category": cause.category.value, "line": cause.line,
                                                 "text": self.redactor.redact(cause.text)},
            **self._progress(watch, now),
        })

    def _verdict(self, watch: RentalWatch) -> Verdict:
        if watch.memory.decided:
            return Verdict.FAILED
        if not watch.reached(Milestone.COMFYUI_READY):
            return Verdict.IN_PROGRESS
        degrading = any(f["severity"] in ("warn", "error") and f["category"] not in ("ssh_unreachable",)
                        for f in watch.memory.findings)
        return Verdict.DEGRADED if degrading else Verdict.READY

    async def _cost(self, watch: RentalWatch, inst: Instance, now: float) -> None:
        m = watch.memory
        dph = inst.dph_total if inst.dph_total is not None else (
            m.rate_seen if m.rate_seen is not None else watch.rental.quoted_dph)
        if m.rate_seen is not None and dph is not None and dph != m.rate_seen:
            # A new rate bills from now on; what ran so far stays at the rate it ran at.
            m.cost_base, m.rate_since = self._cost_now(watch, now), now
        if dph is not None:
            m.rate_seen = dph
        start = inst.start_date or watch.rental.started_at or watch.rental.created_at
        if watch.rental.dph_total != dph or watch.rental.started_at != start:
            watch.rental = await self.store.update_rental(watch.rental.id, now=now, dph_total=dph, started_at=start)
        cost = self._cost_now(watch, now)
        steps = crossed_steps(watch.memory.cost_reported, cost, self.policy.cost_step)
        # A sample a minute (and at each step) is plenty for a history; not one per poll per rental.
        if steps or watch.memory.last_sample is None or now - watch.memory.last_sample >= COST_SAMPLE_EVERY:
            watch.memory.last_sample = now
            await self.store.add_cost_sample(watch.rental.id, ts=now, dph=dph or 0.0, cost_usd=cost)
        for step in steps:
            await self._emit(watch.rental, EV_COST, {"cost_usd": round(cost, 4), "step": step, "dph": dph,
                                                     "elapsed_s": round(now - start, 1)})
        watch.memory.cost_reported = max(watch.memory.cost_reported, cost)
        # A human who keeps a rental past the cap is asked again at each further multiple of it.
        level = 1 + sum(1 for key in watch.memory.declined if key.startswith("engine.dollar_cap"))
        cap = self.policy.rental_dollar_cap * level
        if cost >= cap and not watch.memory.decided:
            await self._finding(watch, Finding(
                Category.STALLED, Severity.FATAL,
                f"cost ${cost:.2f} reached {'the' if level == 1 else f'{level}x the'} per-rental cap of "
                f"${self.policy.rental_dollar_cap:.2f}",
                "Raise RENTAL_DOLLAR_CAP if this rental should run longer.", stops_run=True,
                rule="engine.dollar_cap" if level == 1 else f"engine.dollar_cap.x{level}",
            ))

    def _cost_now(self, watch: RentalWatch, now: float) -> float:
        rental = watch.rental
        if rental.instance_id is None:
            return 0.0  # nothing was rented: the time spent waiting for approval or a create is free
        dph = rental.dph_total if rental.dph_total is not None else rental.quoted_dph
        if watch.memory.rate_since is not None:
            return watch.memory.cost_base + CostMeter(dph or 0.0, watch.memory.rate_since).cost_at(now)
        return CostMeter(dph or 0.0, rental.started_at or rental.created_at).cost_at(now)

    async def _deadlines(self, watch: RentalWatch, now: float) -> None:
        p, m = self.policy, watch.memory.milestones
        created = watch.rental.started_at or watch.rental.created_at
        checks: list[tuple[bool, str, str]] = []
        running = m.get(Milestone.CONTAINER_RUNNING.value)
        ssh_ready = m.get(Milestone.SSH_READY.value)
        started = m.get(Milestone.PROVISIONING_STARTED.value)
        ready = Milestone.COMFYUI_READY.value in m
        if ready:
            return
        checks.append((running is None and now - created >= p.container_running_deadline,
                       "container_running",
                       f"the container is not running after {format_duration(now - created)}"))
        progress_without_ssh = started is not None
        if running is not None and ssh_ready is None and not progress_without_ssh:
            checks.append((now - running >= p.ssh_ready_deadline, "ssh_ready",
                           f"SSH never became reachable in {format_duration(now - running)} of running"))
        if ssh_ready is not None and started is None:
            checks.append((now - ssh_ready >= p.provisioning_started_deadline, "provisioning_started",
                           f"provisioning did not start within {format_duration(now - ssh_ready)} of SSH"))
        checks.append((now - created >= p.comfyui_ready_deadline, "comfyui_ready",
                       f"ComfyUI is not ready after {format_duration(now - created)}"))
        checks.append((now - created >= p.provision_deadline and Milestone.PROVISIONING_COMPLETE.value not in m,
                       "provision_deadline",
                       f"provisioning is not complete after {format_duration(now - created)}"))
        last, seen = watch.memory.last_growth, watch.last_read
        if (last is not None and seen is not None and started is not None
                and Milestone.PROVISIONING_COMPLETE.value not in m and seen - last >= p.stall_timeout):
            checks.append((True, "stalled",
                           f"the provisioning log has shown no progress for {format_duration(seen - last)}"))
        for missed, name, text in checks:
            # A declined deadline stays missed: say it once (when proposed), not at every poll.
            if missed and f"engine.deadline.{name}" not in watch.memory.declined:
                category = Category.SSH_UNREACHABLE if name == "ssh_ready" else Category.STALLED
                await self._finding(watch, Finding(
                    category, Severity.FATAL, text,
                    "Nothing useful is happening on this instance; tear it down and try another host.",
                    stops_run=True, rule=f"engine.deadline.{name}",
                ), extra={"deadline": name})
                return

    # ------------------------------------------------------------------ decisions
    async def _decide(self, watch: RentalWatch, *, reason: str, finding: Finding, key: str | None = None) -> None:
        # A human declines one rule (a slow download is not a stall), not the whole category:
        # the dollar cap and the other deadlines share the "stalled" category and must stay on.
        key = key or reason
        if watch.memory.decided or key in watch.memory.declined:
            return
        watch.memory.decided = reason
        watch.memory.decided_key = key
        now = self.clock.now()
        action = "destroy" if self.policy.teardown_policy == "destroy" else "propose"
        evidence = {"category": finding.category.value, "severity": finding.severity.value,
                    "line": finding.line, "text": self.redactor.redact(finding.text), "advice": finding.advice}
        await self._transition(watch, RentalState.FAILED, reason=f"{reason}: {evidence['text'][:200]}")
        await self._emit(watch.rental, EV_DECISION, {
            "action": action, "reason": reason, "evidence": evidence, **self._progress(watch, now),
        })
        await self._update_verdict(watch)
        if action == "destroy":
            await self._destroy(watch, reason=reason, by="engine")
        else:
            approval = await self.store.create_approval(
                kind=ApprovalKind.TEARDOWN, requester_id=0, rental_id=watch.rental.id,
                payload={"reason": reason, "evidence": evidence}, now=now,
                expires_at=now + self.policy.proposal_timeout, default_action="destroy",
            )
            await self._emit(watch.rental, EV_PROPOSAL, {
                "approval_id": approval.id, "reason": reason, "evidence": evidence,
                "expires_at": approval.expires_at, "default_action": "destroy",
            })

    async def decline_teardown(self, rental_id: int, *, by: str) -> None:
        """A human kept the instance: remember the reason so the same finding does not re-propose."""
        watch = self.watches.get(rental_id)
        if watch is None:
            return
        async with watch.lock:
            if watch.memory.decided:
                watch.memory.declined.append(watch.memory.decided_key or watch.memory.decided)
                watch.memory.decided = watch.memory.decided_key = None
            await self._emit(watch.rental, EV_INFO, {"text": f"teardown declined by {by}; still watching"})
            await self._save(watch)

    async def destroy(self, rental_id: int, *, reason: str, by: str) -> bool:
        """Destroy a rental's instance now (a command, an approved proposal or an expiry)."""
        rental = await self.store.get_rental(rental_id)
        if rental is None:
            return False
        watch = self.watches.get(rental_id) or await self.attach(rental)
        async with watch.lock:
            if watch.rental.state == RentalState.DESTROYED:
                return True
            watch.memory.decided = watch.memory.decided or reason
            ok = await self._destroy(watch, reason=reason, by=by)
            await self._save(watch)
        await self.pump()
        return ok

    async def _destroy(self, watch: RentalWatch, *, reason: str, by: str) -> bool:
        rental = await self.store.get_rental(watch.rental.id) or watch.rental
        watch.rental = rental
        if rental.state == RentalState.DESTROYED:
            return True
        if rental.state != RentalState.TEARING_DOWN:
            await self._transition(watch, RentalState.TEARING_DOWN, reason=reason)
            rental = watch.rental
        if rental.instance_id is None and rental.id in self.creating:
            # The rent service destroys the instance as soon as Vast answers the create.
            await self._emit(rental, EV_INFO, {"text": "the instance is still being created; "
                                                       "it will be destroyed as soon as Vast answers"})
            return False
        instance_id = rental.instance_id
        if instance_id is None:
            # No id recorded does not mean nothing was rented: ask Vast for the rental's label.
            try:
                found = await self.vast.find_by_label(rental.label)
            except VastError as exc:
                await self._emit(rental, EV_INFO, {"text": f"could not look for the instance yet ({exc}); retrying"})
                return False
            if found is not None:
                instance_id = found.id
                watch.rental = rental = await self.store.update_rental(
                    rental.id, now=self.clock.now(), instance_id=found.id,
                    started_at=found.start_date or rental.started_at or self.clock.now(),
                    dph_total=found.dph_total if found.dph_total is not None else rental.quoted_dph,
                )
        gone, problem = True, ""
        if instance_id is not None:
            try:
                gone = await self.vast.destroy_instance(instance_id)
            except VastError as exc:
                log.warning("destroy of instance %s failed: %s (retrying next poll)", instance_id, exc)
                gone, problem = False, str(exc)
        if not gone:
            await self._destroy_not_confirmed(watch, instance_id, problem)
            return False
        await self._finish(watch, reason=reason, by=by)
        return True

    async def _destroy_not_confirmed(self, watch: RentalWatch, instance_id: int | None, problem: str) -> None:
        """Retry next poll; after a few failures tell people, once: the instance is still billing."""
        watch.memory.destroy_failures += 1
        text = f"destroy not confirmed yet ({problem or 'Vast still lists the instance'}); retrying"
        await self._emit(watch.rental, EV_INFO, {"text": text})
        if watch.memory.destroy_failures == DESTROY_ALERT_AFTER:
            await self._emit(watch.rental, EV_FINDING, {
                "line": None, "category": Category.UNKNOWN.value, "severity": Severity.ERROR.value,
                "text": f"Vast has not confirmed that instance {instance_id} is destroyed after "
                        f"{DESTROY_ALERT_AFTER} attempts: {problem or 'it is still listed'}",
                "advice": "It may still be billing. Destroy it in the Vast console (Instances) now; "
                          "the bot keeps retrying every poll.",
                "stops_run": False, "rule": "engine.destroy_unconfirmed",
            })

    async def _gone(self, watch: RentalWatch, now: float) -> None:
        await self._finish(watch, reason=watch.memory.decided or "instance disappeared from the account",
                           by="vast")

    async def _finish(self, watch: RentalWatch, *, reason: str, by: str) -> None:
        now = self.clock.now()
        cost = self._cost_now(watch, now)
        rental = watch.rental
        await self.store.add_cost_sample(rental.id, ts=now, dph=rental.dph_total or rental.quoted_dph or 0.0,
                                         cost_usd=cost)
        await self.store.update_rental(rental.id, now=now, ended_at=now)
        await self._transition(watch, RentalState.DESTROYED, reason=reason)
        # A teardown proposal still open has nothing left to decide: close it so its buttons say so.
        for approval in await self.store.pending_approvals(rental_id=rental.id):
            if await self.store.decide_approval(approval.id, status=ApprovalStatus.CANCELLED, by_id=0,
                                                by_name="vastops", now=now, note="rental already destroyed"):
                await self._emit(rental, EV_APPROVAL, {"approval_id": approval.id, "kind": approval.kind.value,
                                                       "status": "cancelled"})
        # Only the engine's own verdict blames the machine: a user's /destroy says nothing about it.
        failed = watch.memory.decided_key is not None and watch.memory.verdict != Verdict.READY.value
        if rental.machine_id is not None:
            await self.store.record_host_outcome(
                machine_id=rental.machine_id, host_id=rental.host_id, geolocation=rental.geolocation,
                outcome="failed" if failed else "ok", reason=reason, now=now,
            )
        start = rental.started_at or rental.created_at
        await self._emit(rental, EV_RECEIPT, {
            "duration_s": round(now - start, 1), "cost_usd": round(cost, 4), "reason": reason, "by": by,
            "dph": rental.dph_total or rental.quoted_dph,
            "milestones": [name for name in (m.value for m in Milestone) if name in watch.memory.milestones],
            "verdict": watch.memory.verdict,
        })
        await self._close_session(watch)
        self.watches.pop(rental.id, None)
        for hook in self.on_destroyed:
            try:
                await hook(rental)
            except Exception:  # a consumer's failure must not stop the engine's own work
                log.exception("on_destroyed hook failed for rental %s", rental.id)

    async def _expire_approvals(self) -> None:
        now = self.clock.now()
        for approval in await self.store.expire_due_approvals(now):
            # They are marked expired already: one failing must not cost the others their default action.
            try:
                await self._expired(approval, now)
            except Exception:
                log.exception("the default action of approval %s failed", approval.id)

    async def _expired(self, approval: Approval, now: float) -> None:
        if approval.rental_id is None:
            return
        rental = await self.store.get_rental(approval.rental_id)
        if rental is None:
            return
        await self._emit(rental, EV_APPROVAL, {
            "approval_id": approval.id, "kind": approval.kind.value, "status": "expired",
            "default_action": approval.default_action,
        })
        if approval.kind == ApprovalKind.TEARDOWN and approval.default_action == "destroy":
            await self.destroy(rental.id, reason=f"{approval.payload.get('reason', 'teardown')} "
                               "(nobody answered the proposal)", by="default action on expiry")
        elif approval.kind == ApprovalKind.RENT:
            await self.store.transition_rental(rental.id, to=RentalState.EXPIRED, now=now,
                                               expected=[RentalState.AWAITING_APPROVAL],
                                               reason="approval expired")

    # ------------------------------------------------------------------ plumbing
    async def _transition(self, watch: RentalWatch, to: RentalState, *, reason: str) -> None:
        before = watch.rental.state
        if before == to:
            return
        await self._save(watch)
        async with self.store.transaction():
            ok = await self.store.transition_rental(watch.rental.id, to=to, now=self.clock.now(), reason=reason)
            if ok:
                await self.store.append_event(watch.rental.id, kind=EV_STATE, ts=self.clock.now(),
                                              payload={"from": before.value, "to": to.value, "reason": reason})
        if ok:
            watch.rental = await self.store.get_rental(watch.rental.id) or watch.rental

    async def _emit(self, rental: Rental, kind: str, payload: dict[str, Any]) -> Event | None:
        """Store the event (with its sequence number) before anyone sees it; ``pump`` delivers.

        While a watch is active for the rental, the event joins its buffer and is written with
        the watch state in ``_save``; otherwise it is written at once.
        """
        watch = self.watches.get(rental.id)
        if watch is not None and watch.lock.locked():
            watch.buffer.append((kind, payload, self.clock.now()))
            return None
        return await self.store.append_event(rental.id, kind=kind, payload=payload, ts=self.clock.now())

    async def emit(self, rental: Rental, kind: str, payload: dict[str, Any]) -> Event:
        """Store an event from outside the engine (the rent service) and deliver it."""
        event = await self.store.append_event(rental.id, kind=kind, payload=payload, ts=self.clock.now())
        await self.pump()
        return event

    async def pump(self) -> int:
        """Deliver stored, undelivered events in order; mark each once delivered."""
        if self.notifier is None:
            return 0
        delivered = 0
        async with self._pump_lock:
            blocked: set[int] = set()
            for event in await self.store.unposted_events(limit=500):
                if event.rental_id in blocked:
                    continue
                rental = await self.store.get_rental(event.rental_id)
                if rental is None:
                    continue
                try:
                    await self.notifier.notify(rental, event)
                except Exception:  # a failed delivery is retried at the next pump, in order
                    log.exception("delivering event %s of rental %s failed", event.seq, rental.id)
                    blocked.add(event.rental_id)
                    continue
                await self.store.mark_posted([event.id], now=self.clock.now())
                delivered += 1
        return delivered

    async def _save(self, watch: RentalWatch) -> None:
        """Write buffered events and the state that produced them in one transaction."""
        endpoint = endpoint_for(watch.instance) if watch.instance is not None else None
        buffered, watch.buffer = watch.buffer, []
        # The assembler may hold a partial last line: resume from its first byte after a restart.
        offset = watch.replay_to or max(0, watch.log_offset - watch.assembler.pending_bytes)
        async with self.store.transaction():
            for kind, payload, ts in buffered:
                await self.store.append_event(watch.rental.id, kind=kind, payload=payload, ts=ts)
            await self.store.save_watch_state(
                watch.rental.id, log_offset=offset, log_path=self.policy.log_path,
                host_key=watch.host_key, ssh_endpoint=f"{endpoint.host}:{endpoint.port}" if endpoint else None,
                data=watch.memory.to_json(), now=self.clock.now(),
            )

    async def _close_session(self, watch: RentalWatch) -> None:
        session, watch.session = watch.session, None
        if session is not None:
            try:
                await session.close()
            except Exception:  # closing a dead connection must not matter
                log.debug("closing SSH session failed", exc_info=True)


COST_SAMPLE_EVERY = 60.0
IDLE_LIST_EVERY = 4
LABEL_PREFIX = "vastops-"  # every rental label starts with it (bot.rentals)
# Closed rentals whose instance, if Vast still lists it, is an orphan to destroy.
ORPHANING_STATES = frozenset({RentalState.CREATE_FAILED, RentalState.DESTROYED, RentalState.DENIED,
                              RentalState.EXPIRED})
DESTROY_ALERT_AFTER = 3
HELD_UNTIL_READY = frozenset({Milestone.TUNNEL_READY, Milestone.PORTAL_READY})
SERVICE_LOGS = ("/var/log/tunnel_manager.log",)


def _partial(data: bytes) -> int:
    """Bytes after the last newline (a line still being written)."""
    return len(data) - data.rfind(b"\n") - 1


def _new_suffix(previous: list[str], current: list[str]) -> list[str]:
    """Lines of ``current`` after the last place the tail of ``previous`` occurs in it.

    Container-log snapshots overlap (each is the last N lines); this keeps only what is new.
    """
    if not previous:
        return current
    tail = previous[-20:]
    for k in range(len(tail), 0, -1):
        pattern = tail[-k:]
        for i in range(len(current) - k, -1, -1):
            if current[i:i + k] == pattern:
                return current[i + k:]
    return current
