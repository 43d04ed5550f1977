"""From analysed lines to what the channel hears: milestones, findings (grouped, noise counted, not
posted), the verdict, and the teardown decision a conclusive finding calls for."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bot.clock import Clock
from bot.db.models import RentalState
from bot.watch.events import EV_FINDING, EV_MILESTONE, EV_NOISE, EV_VERDICT
from bot.watch.links import comfyui_link, displayable, tunnel_link
from bot.watch.model import Category, Finding, Milestone, MilestoneHit, Severity, Verdict
from bot.watch.progress import parse_progress
from bot.watch.records import Recorder
from bot.watch.redact import Redactor
from bot.watch.state import RentalWatch
from bot.watch.teardown import Teardown, progress

HELD_UNTIL_READY = frozenset({Milestone.TUNNEL_READY, Milestone.PORTAL_READY})
GROUP_SHOWN = 8  # lines shown in one grouped post


class Findings:
    """Turns analysis outcomes into stored events and, when conclusive, a teardown decision."""

    def __init__(self, *, clock: Clock, redactor: Redactor, recorder: Recorder, teardown: Teardown) -> None:
        self.clock = clock
        self.redactor = redactor
        self.rec = recorder
        self.teardown = teardown

    # ------------------------------------------------------------------ lines
    async def lines(self, watch: RentalWatch, lines: Iterable[str]) -> bool:
        """Analyse new lines; True if any of them is progress (for the stall clock).

        Consecutive non-fatal findings of one category (a wheel build failing prints five error
        lines) become one post with all their lines, not five posts on someone's phone.
        """
        progressed = False
        group: list[Finding] = []
        for line in lines:
            watch.memory.lineno += 1
            outcome = watch.analysis.feed_line(line, watch.memory.lineno)
            progressed = is_progress(watch, outcome) or progressed
            if outcome.milestones:
                await self._flush_group(watch, group)
            for hit in outcome.milestones:
                await self.log_milestone(watch, hit)
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
                    await self.finding(watch, finding)
                else:
                    group.append(finding)
            if watch.memory.decided:
                break
        await self._flush_group(watch, group)
        await self._noise_summary(watch)
        await self.update_verdict(watch)
        return progressed

    async def _flush_group(self, watch: RentalWatch, group: list[Finding]) -> None:
        if not group:
            return
        first, rest = group[0], group[1:]
        group.clear()
        if not rest:
            await self.finding(watch, first)
            return
        shown = [first, *rest[:GROUP_SHOWN - 1]]
        text = "\n".join(f.text for f in shown)
        if len(rest) > GROUP_SHOWN - 1:
            text += f"\n… and {len(rest) - GROUP_SHOWN + 1} more line(s) like these"
        merged = Finding(first.category, first.severity, text, first.advice, line=first.line,
                         stops_run=False, rule=first.rule)
        await self.finding(watch, merged, extra={"lines": [f.line for f in [first, *rest]], "similar": len(rest)})

    async def log_milestone(self, watch: RentalWatch, hit: MilestoneHit) -> None:
        if hit.name in HELD_UNTIL_READY and not watch.reached(Milestone.COMFYUI_READY):
            # A tunnel URL exists before ComfyUI answers (it shows a loading page): hold it.
            if not any(h["name"] == hit.name.value for h in watch.memory.held):
                watch.memory.held.append({"name": hit.name.value, "line": hit.line, **hit.detail})
            return
        if hit.name == Milestone.COMFYUI_READY:
            # A log line alone is not readiness: the collector confirms /system_stats over SSH.
            if not watch.reached(Milestone.COMFYUI_READY):
                watch.memory.comfy_pending = {"line": hit.line, **hit.detail}
            return
        await self.milestone(watch, hit.name, {"line": hit.line, **hit.detail})
        if (hit.name == Milestone.PROVISIONING_COMPLETE and not watch.reached(Milestone.COMFYUI_READY)
                and watch.memory.comfy_pending is None):
            # ComfyUI's own "To see the GUI" line goes to the container log, never to our script's
            # log: once provisioning is complete, probe /system_stats every poll until it answers.
            watch.memory.comfy_pending = {"after": Milestone.PROVISIONING_COMPLETE.value}

    async def comfyui_confirmed(self, watch: RentalWatch, detail: dict[str, Any]) -> None:
        """ComfyUI answered: the ready milestone, then the tunnel/portal milestones held for it."""
        await self.milestone(watch, Milestone.COMFYUI_READY, detail)
        held, watch.memory.held = watch.memory.held, []
        for item in held:
            await self.milestone(watch, Milestone(item.pop("name")), item)
        await self.update_verdict(watch)

    # ------------------------------------------------------------------ events
    async def milestone(self, watch: RentalWatch, name: Milestone, detail: dict[str, Any]) -> None:
        if watch.reached(name):
            return
        now = self.clock.now()
        watch.memory.milestones[name.value] = now
        detail = dict(detail)
        if "url" in detail:
            # A link's host never comes from free text: ComfyUI's from Vast's address for the instance,
            # a tunnel's only if it has the quick-tunnel shape. Anything else is not shown or stored.
            if name == Milestone.COMFYUI_READY:
                detail["url"] = comfyui_link(watch.instance) if watch.instance is not None else None
            elif name == Milestone.TUNNEL_READY:
                detail["url"] = tunnel_link(str(detail["url"]))
            elif name == Milestone.PORTAL_READY:
                detail["url"] = displayable(str(detail["url"]))
        elif name == Milestone.COMFYUI_READY and watch.instance is not None:
            detail["url"] = comfyui_link(watch.instance)
        payload: dict[str, Any] = {"name": name.value, **{k: v for k, v in detail.items() if v is not None}}
        payload.update(progress(watch.rental, now))
        if name == Milestone.TUNNEL_READY and detail.get("url"):
            await self.rec.update_rental(watch, tunnel_url=str(detail["url"]))
        if name == Milestone.COMFYUI_READY and detail.get("url"):
            await self.rec.update_rental(watch, comfyui_url=str(detail["url"]))
        await self.rec.emit(watch.rental, EV_MILESTONE, payload)

    async def finding(self, watch: RentalWatch, finding: Finding, extra: dict[str, Any] | None = None) -> None:
        text = self.redactor.redact(finding.text)
        payload = {**finding.to_dict(), "text": text, "stops_run": finding.stops_run, "rule": finding.rule,
                   **(extra or {})}
        watch.memory.findings.append({k: payload[k] for k in ("category", "severity", "line", "text", "stops_run")})
        await self.rec.emit(watch.rental, EV_FINDING, payload)
        if finding.stops_run or finding.severity == Severity.FATAL:
            cause = watch.analysis.cause() if finding.rule and not finding.rule.startswith("engine.") else None
            await self.teardown.decide(watch, reason=finding.category.value, finding=cause or finding,
                                       key=finding.rule or finding.category.value, before_act=self.update_verdict)

    async def _noise_summary(self, watch: RentalWatch) -> None:
        total = sum(watch.memory.noise.values())
        # Summarise noise as a count, at most once per 25 new lines of it.
        if total and (watch.memory.noise_posted == 0 or total - watch.memory.noise_posted >= 25):
            watch.memory.noise_posted = total
            await self.rec.emit(watch.rental, EV_NOISE, {
                "counts": dict(watch.memory.noise), "total": total,
                "text": f"{total} harmless platform line(s) ignored (e.g. 'remote port forwarding failed')",
            })

    async def update_verdict(self, watch: RentalWatch) -> None:
        verdict = verdict_of(watch)
        if verdict.value == watch.memory.verdict:
            return
        watch.memory.verdict = verdict.value
        now = self.clock.now()
        if verdict in (Verdict.READY, Verdict.DEGRADED):
            target = RentalState.READY if verdict == Verdict.READY else RentalState.DEGRADED
            await self.rec.transition(watch, target, reason=f"verdict {verdict.value}")
        cause = watch.analysis.cause()
        await self.rec.emit(watch.rental, EV_VERDICT, {
            "verdict": verdict.value,
            "cause": None if cause is None else {"category": cause.category.value, "line": cause.line,
                                                 "text": self.redactor.redact(cause.text)},
            **progress(watch.rental, now),
        })


def verdict_of(watch: RentalWatch) -> Verdict:
    if watch.memory.decided or watch.pending_decision is not None:
        return Verdict.FAILED
    if not watch.reached(Milestone.COMFYUI_READY):
        return Verdict.IN_PROGRESS
    degrading = any(f["severity"] in ("warn", "error") and f["category"] not in ("ssh_unreachable",)
                    for f in watch.memory.findings)
    return Verdict.DEGRADED if degrading else Verdict.READY


def is_progress(watch: RentalWatch, outcome: Any) -> bool:
    """Whether one analysed line is progress, keeping the byte counters of downloads under way.

    Growth is not progress: platform noise, our heartbeat and a download whose byte counter
    stopped would otherwise keep a hung run from ever looking stalled. A counter is stamped with
    the time the log was read (``watch.last_read``), which is when the bot could know it moved.
    """
    if outcome.noise:
        return False
    memory = watch.memory
    now = watch.last_read
    event = outcome.event
    if event is None:
        reading = parse_progress(outcome.text or "")
        if reading is None:
            # Other work went on: the run moved on from whatever transfer it printed before.
            memory.downloads = {k: v for k, v in memory.downloads.items() if not v.get("tool")}
            return True
        return _counter(memory, reading.key, reading.done, reading.total, now, tool=reading.tool,
                        finished=reading.finished)
    if event.ev == "heartbeat":
        return False
    if event.ev != "model.progress":
        # Our script moved on: whatever transfer a tool printed before is over (or not ours to time).
        memory.downloads = {k: v for k, v in memory.downloads.items() if not v.get("tool")}
    if event.ev == "model.start":
        name = str(event.get("name", ""))
        memory.downloads.pop(f"model:{name}", None)
        return True
    if event.ev in ("model.done", "model.fail", "run.done"):
        if event.ev == "run.done":
            memory.downloads.clear()
        else:
            memory.downloads.pop(f"model:{event.get('name', '')}", None)
        return True
    if event.ev == "model.progress":
        name = str(event.get("name", ""))
        try:
            done = int(event.get("bytes") or 0)
        except (TypeError, ValueError):
            return False
        before = memory.progress_bytes.get(name)
        memory.progress_bytes[name] = max(done, before or 0)
        total = event.get("total")
        _counter(memory, f"model:{name}", done, int(total) if isinstance(total, int) else None, now, tool="")
        return before is None or done > before
    return True


def _counter(memory: Any, key: str, done: int, total: int | None, now: float | None, *, tool: str,
             finished: bool = False) -> bool:
    """Record a byte counter reading; True if it moved (a new transfer counts as moving)."""
    if finished:
        moved: bool = memory.downloads.pop(key, {}).get("bytes") != done
        return moved
    current = memory.downloads.get(key)
    # A smaller count under the same key is a new transfer (wget and curl print no file name).
    moved = current is None or done != current.get("bytes")
    if moved:
        memory.downloads[key] = {"bytes": done, "since": now, "total": total, "tool": tool}
    elif current is not None and current.get("since") is None:
        current["since"] = now
    return moved
