"""Log collection for one rental: SSH connect with jittered backoff, incremental tail, replay after a
restart, the container-log fallback (bounded), and the ComfyUI and service-log probes."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re

from bot.clock import Clock
from bot.durations import format_duration
from bot.vast.client import VastClient
from bot.vast.errors import VastError
from bot.vast.models import Instance
from bot.watch.events import EV_LOG_ROTATED
from bot.watch.findings import HELD_UNTIL_READY, Findings
from bot.watch.lines import LineAssembler
from bot.watch.milestones import MilestoneParser
from bot.watch.model import Category, Finding, Milestone, Severity
from bot.watch.records import Recorder
from bot.watch.redact import Redactor
from bot.watch.ssh import (
    HostKeyChanged,
    SshBackoff,
    SshFatal,
    SshTransient,
    TailChunk,
    best_alternative_log,
    endpoint_for,
)
from bot.watch.state import RentalWatch, SshConnector, WatchPolicy

log = logging.getLogger(__name__)

SERVICE_LOGS = ("/var/log/tunnel_manager.log",)
CHUNK = 1 << 20
# Per poll: up to this many chunks of new log (a fast log must not fall behind), and this many
# chunks of replay after a restart (a big log is replayed over several polls, not in one).
TAIL_CHUNKS = 8
REPLAY_CHUNKS = 4
FALLBACK_TAIL = 50
# Share of a poll interval a poll waits for a container log it asked for; later it is the next poll's.
CONTAINER_LOG_WAIT = 0.1
# ...and never more than this in real seconds (loopback answers come at once; Vast's in well under it).
CONTAINER_LOG_REAL_CAP = 1.0
SEEN_LINES = 300  # distinct container-log lines remembered to tell news from repeated chatter
_DIGITS = re.compile(r"\d+")


class LogCollector:
    """Reads a rental's provisioning log and hands new lines to :class:`Findings`."""

    def __init__(self, *, vast: VastClient, clock: Clock, policy: WatchPolicy, redactor: Redactor,
                 recorder: Recorder, findings: Findings, ssh_connect: SshConnector) -> None:
        self.vast = vast
        self.clock = clock
        self.policy = policy
        self.redactor = redactor
        self.rec = recorder
        self.findings = findings
        self.ssh_connect = ssh_connect
        # Container-log reads left this poll (each costs two API calls); reset by the engine.
        self.fallback_budget = 0

    async def collect(self, watch: RentalWatch, inst: Instance, now: float) -> None:
        running_since = watch.memory.milestones.get(Milestone.CONTAINER_RUNNING.value, now)
        if watch.session is None and now >= watch.next_ssh_attempt and not watch.memory.fallback_only:
            await self._connect(watch, inst, now, running_since)
            if (watch.session is not None and watch.memory.fallback_tail and watch.log_offset == 0
                    and not watch.replay_to):
                # SSH is back after the container log was read: the file holds the same lines.
                # Catch up through the container log once more and tail the file from its end,
                # so nothing is analysed (and posted) twice.
                await self._container_logs(watch, now, force=True)
                try:
                    probe = await watch.session.read_new(self.policy.log_path, 0, max_bytes=1)
                except SshTransient:
                    await self.close_session(watch)
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
        try:
            session = await self.ssh_connect(endpoint, key_path=self.policy.ssh_key_path,
                                             known_host_key=watch.host_key,
                                             connect_timeout=self.policy.connect_timeout)
        except HostKeyChanged as exc:
            await self.findings.finding(watch, Finding(
                Category.CONFIG, Severity.ERROR, f"SSH host key changed for this instance: {exc}",
                "Someone may be intercepting the connection. The bot stopped using SSH for this "
                "instance and reads container logs instead.", rule="engine.host_key_changed"))
            watch.memory.fallback = watch.memory.fallback_only = True
            return
        except SshFatal as exc:
            await self.findings.finding(watch, Finding(
                Category.AUTH, Severity.ERROR, f"SSH login refused: {exc}",
                "Add the public half of SSH_KEY_PATH to your Vast account (Account > SSH keys). "
                "The bot reads container logs meanwhile.", rule="engine.ssh_auth"))
            watch.memory.fallback = watch.memory.fallback_only = True
            return
        except SshTransient as exc:
            if watch.ssh_backoff is None:
                watch.ssh_backoff = SshBackoff(self.clock, base=2.0, cap=max(2.0, self.policy.poll_interval))
            watch.next_ssh_attempt = now + watch.ssh_backoff.next_delay()
            if watch.memory.ssh_fail_since is None:
                watch.memory.ssh_fail_since = now
            if watch.memory.ssh_port_seen_at is None:
                watch.memory.ssh_port_seen_at = now  # Vast maps the port: refusals are now news
            if now - watch.memory.ssh_port_seen_at >= self.policy.ssh_refused_grace:
                # Ask the container log whether anything happens without SSH (see money.ssh_refused_text).
                watch.memory.fallback = True
            # Refused/reset/timeouts during boot are expected: only past the grace is it news.
            if now - running_since >= self.policy.ssh_boot_grace and not watch.memory.ssh_unreachable_reported:
                watch.memory.ssh_unreachable_reported = True
                watch.memory.fallback = True
                await self.findings.finding(watch, Finding(
                    Category.SSH_UNREACHABLE, Severity.WARN,
                    f"SSH to {endpoint.host}:{endpoint.port} still fails after "
                    f"{format_duration(now - running_since)} of running: {exc}",
                    "Reading the container log through the Vast API instead; the watch goes on.",
                    rule="engine.ssh_unreachable"))
            return
        watch.session = session
        watch.ssh_backoff = None
        watch.memory.ssh_fail_since = None
        watch.memory.ssh_port_seen_at = None
        seen_key = getattr(session, "host_key", None)
        if seen_key and seen_key != watch.host_key:
            watch.host_key = seen_key
        await self.findings.milestone(watch, Milestone.SSH_READY, {"endpoint": f"{endpoint.host}:{endpoint.port}"})

    async def _replay(self, watch: RentalWatch) -> bool:
        """Rebuild the analysis from bytes the previous process already analysed (no events).

        Bounded per poll; True once done (the tail may go on).
        """
        assembler = watch.replay_assembler or LineAssembler()
        watch.replay_assembler = assembler
        target = watch.replay_to
        for _ in range(REPLAY_CHUNKS):
            offset = watch.replay_offset
            if offset >= target:
                break
            chunk = await watch.session.read_new(self.policy.log_path, offset, max_bytes=min(CHUNK, target - offset))
            if chunk.missing or chunk.size < target or not chunk.data:
                break  # the file shrank or vanished meanwhile: the normal tail reports it
            watch.replay_offset = chunk.new_offset
            for line in assembler.feed(chunk.data):
                watch.replay_lineno += 1
                watch.analysis.feed_line(line, watch.replay_lineno)
        else:
            if watch.replay_offset < target:
                return False  # more next poll
        if watch.replay_offset == target:
            watch.assembler = assembler
        watch.replay_to, watch.log_offset = 0, target
        watch.replay_assembler = None
        return True

    async def _tail(self, watch: RentalWatch, now: float) -> None:
        try:
            if watch.replay_to and not await self._replay(watch):
                return
            for _ in range(TAIL_CHUNKS):
                chunk = await watch.session.read_new(self.policy.log_path, watch.log_offset, max_bytes=CHUNK)
                if not await self._take(watch, chunk, now) or chunk.behind <= 0:
                    break
        except SshTransient as exc:
            log.info("rental %s: SSH read failed (%s); reconnecting next poll", watch.rental.id, exc)
            await self.close_session(watch)

    async def _take(self, watch: RentalWatch, chunk: TailChunk, now: float) -> bool:
        """Analyse one chunk; False when nothing more should be read this poll."""
        if chunk.missing:
            await self._log_missing(watch, now)
            return False
        watch.memory.log_missing_since = None
        if watch.memory.last_growth is None:
            watch.memory.last_growth = now
        if chunk.rotated:
            watch.memory.rotations += 1
            watch.assembler = LineAssembler()
            await self.rec.emit(watch.rental, EV_LOG_ROTATED, {
                "path": self.policy.log_path, "previous_offset": watch.log_offset,
                "size": chunk.size,
                "text": "the provisioning log shrank (rotated or truncated); reading it again from the start",
            })
        watch.log_offset = chunk.new_offset
        watch.last_read = now
        data = chunk.data
        if data and await self.findings.lines(watch, watch.assembler.feed(data)):
            watch.memory.last_growth = now
        return bool(data) and not watch.memory.decided

    async def _log_missing(self, watch: RentalWatch, now: float) -> None:
        if watch.memory.log_missing_since is None:
            watch.memory.log_missing_since = now
            return
        if now - watch.memory.log_missing_since < self.policy.missing_grace:
            return
        try:
            candidates = await watch.session.list_candidate_logs()
        except SshTransient:
            await self.close_session(watch)
            return
        configured = self.policy.log_path
        best = best_alternative_log(configured, candidates)
        if best is None or "provision" not in best.path.rsplit("/", 1)[-1].lower():
            # Only the image's own service logs (caddy, portal...): our script has not started yet.
            # Not conclusive; the provisioning-started deadline bounds the wait.
            return
        names = [best.path] + [c.path for c in candidates if c.path != best.path]
        text = (f"PROVISION_LOG_PATH {configured} does not exist on the instance; "
                f"logs that do exist: {', '.join(names[:6])}")
        advice = (f"The script writes {best.path} but the bot reads {configured}: the script that ran "
                  "is not ours or ignores PROV_LOG_PATH. Fix the script or PROVISION_LOG_PATH; "
                  "this instance is not provisioning as intended.")
        await self.findings.finding(watch, Finding(Category.CONFIG, Severity.FATAL, text, advice, stops_run=True,
                                                   rule="engine.log_missing"),
                                    extra={"candidates": names, "configured": configured})

    async def _container_logs(self, watch: RentalWatch, now: float, *, force: bool = False) -> None:
        """Read Vast's container log: at most every few polls, within the poll's budget."""
        if watch.rental.instance_id is None:
            return
        task = watch.logs_task
        if task is None:
            watch.memory.container_log_poll += 1
            first = watch.memory.container_read_at is None and not watch.memory.fallback_tail
            due = (watch.memory.container_log_poll >= self.policy.container_log_every or first
                   or self._settles_ssh(watch, now))
            if not force and (not due or self.fallback_budget <= 0):
                return
            self.fallback_budget -= 1
            watch.memory.container_log_poll = 0
            # Vast uploads the log, then we fetch it: that can take a minute. It runs beside the poll
            # and is picked up when done, so a host that never uploads never holds a poll up.
            task = watch.logs_task = asyncio.create_task(self.vast.request_logs(watch.rental.instance_id),
                                                         name=f"container-log-{watch.rental.id}")
            # Wait a little on the injected clock (a fast answer is used in this poll), never longer.
            timer = asyncio.create_task(self.clock.sleep(self.policy.poll_interval * CONTAINER_LOG_WAIT))
            try:
                await asyncio.wait({task, timer}, timeout=CONTAINER_LOG_REAL_CAP,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                timer.cancel()
        if not task.done():
            return
        watch.logs_task = None
        try:
            text = task.result()
        except asyncio.CancelledError:
            return
        except VastError as exc:
            log.info("rental %s: container logs unavailable: %s", watch.rental.id, exc)
            return
        # Redacted before anything else sees or stores them: nothing unredacted is kept.
        lines = [self.redactor.redact(line) for line in text.splitlines()]
        new = new_suffix(watch.memory.fallback_tail, lines)
        watch.memory.fallback_tail = lines[-FALLBACK_TAIL:]
        watch.last_read = now
        novel = _note_novel(watch.memory.container_seen, new) or watch.memory.container_novel_at is None
        if new and await self.findings.lines(watch, new):
            watch.memory.last_growth = now
        # A transfer whose counter moved in these lines is news even if its line looks the same.
        moved = any(entry.get("since") == now for entry in watch.memory.downloads.values())
        if not any(line.strip() for line in lines):
            return  # an empty container log (Vast's upload lags or failed) is no evidence of anything
        watch.memory.container_read_at = now
        if novel or moved:
            watch.memory.container_novel_at = now

    def _settles_ssh(self, watch: RentalWatch, now: float) -> bool:
        """Whether a read now could settle that SSH never comes (money.ssh_refused_text): the
        container log has been quiet for the grace. Read then, not at the next cadence read, so
        the decision does not wait up to ``container_log_every`` polls more."""
        m = watch.memory
        if m.ssh_port_seen_at is None or m.container_novel_at is None:
            return False
        if watch.reached(Milestone.SSH_READY) or watch.reached(Milestone.PROVISIONING_STARTED):
            return False
        return now - m.container_novel_at >= self.policy.ssh_refused_grace

    async def _confirm_comfyui(self, watch: RentalWatch) -> None:
        pending = watch.memory.comfy_pending or {}
        ports: tuple[int, ...] = (18188, 8188)
        if isinstance(pending.get("port"), int | str) and str(pending.get("port")).isdigit():
            port = int(pending["port"])
            ports = (port, *[p for p in ports if p != port])
        try:
            check = await watch.session.check_comfyui(ports=ports)
        except SshTransient:
            await self.close_session(watch)
            return
        if check.ok:
            watch.memory.comfy_pending = None
            detail = {k: v for k, v in pending.items() if k != "needs_http_check"}
            detail["confirmed"] = "GET /system_stats answered 200 with devices"
            await self.findings.comfyui_confirmed(watch, detail)

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
                await self.close_session(watch)
                return
            if chunk.missing:
                continue
            watch.memory.service_offsets[path] = chunk.new_offset - _partial(chunk.data)
            text = chunk.data[: len(chunk.data) - _partial(chunk.data)]
            for number, line in enumerate(LineAssembler().feed(text), start=1):
                for hit in parser.feed(self.redactor.redact(line), number):
                    if hit.name in HELD_UNTIL_READY:
                        await self.findings.milestone(watch, hit.name, {"source": path, **hit.detail})

    async def close_session(self, watch: RentalWatch) -> None:
        if watch.logs_task is not None and not watch.logs_task.done():
            watch.logs_task.cancel()
        session, watch.session = watch.session, None
        if session is not None:
            try:
                await session.close()
            except Exception:  # closing a dead connection must not matter
                log.debug("closing SSH session failed", exc_info=True)


def _note_novel(seen: list[str], lines: list[str]) -> bool:
    """Remember ``lines`` (digits folded, so a counter or a port number is not news); True if any
    was not seen before. The same boot chatter every few seconds is not progress."""
    novel = False
    known = set(seen)
    for line in lines:
        folded = _DIGITS.sub("#", line.strip())
        # A short digest: the memory is saved every poll, and only sameness matters here.
        key = hashlib.blake2b(folded.encode(), digest_size=8).hexdigest() if folded else ""
        if key and key not in known:
            known.add(key)
            seen.append(key)
            novel = True
    del seen[:-SEEN_LINES]
    return novel


def _partial(data: bytes) -> int:
    """Bytes after the last newline (a line still being written)."""
    return len(data) - data.rfind(b"\n") - 1


def new_suffix(previous: list[str], current: list[str]) -> list[str]:
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
