"""What one rehearsal did (``RunResult``) and how it differs from its scenario's expectation.

Plain data, in simulated seconds since the instance was created: the demo prints it, the tests
assert on it and the benchmark measures it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.db.models import Event, Rental
from bot.sim.scenarios import Scenario

SEVERITY_RANK = {"info": 0, "warn": 1, "error": 2, "fatal": 3}
DRIFT = "clock drift"  # how a mismatch caused by late polls, not by the bot, is named


@dataclass
class RunResult:
    """What happened in one rehearsal, in simulated seconds since the instance was created."""

    scenario: Scenario
    poll_interval: float
    rental: Rental | None = None
    instance_id: int | None = None
    country: str | None = None
    geolocation: str | None = None
    dph: float | None = None
    verdict: str = "in_progress"
    category: str | None = None  # the cause category of a failure (or of a degraded run)
    knew_at: float | None = None  # first conclusive finding, or ComfyUI confirmed ready
    decision_at: float | None = None  # teardown decision
    stopped_at: float | None = None  # instance destroyed (spending stopped)
    spent: float = 0.0  # the bot's figure (receipt / rental_cost) until spending stopped (or until ready)
    sim_spent: float = 0.0  # what the simulator billed over the same time: the ground truth
    billed_total: float = 0.0  # everything billed, including the demo's own cleanup
    conclusive: dict[str, Any] | None = None  # payload of the finding that ended the run
    findings: list[dict[str, Any]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    preflight: Any = None  # the preflight report for this scenario's script URL, when available
    preflight_blocked: bool | None = None
    preflight_message: str = ""  # what the rent service answered the approver when it blocked
    audit_pick: dict[str, Any] | None = None  # the offer the audit's filter would have rented
    wall_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    billing_stopped: bool | None = None  # the simulator bills nothing more after the teardown
    sim_calls: dict[str, int] = field(default_factory=dict)  # API requests the simulator served
    workdir: Path | None = None  # the stage's temporary directory (removed when the run ends)
    poll_times: list[float] = field(default_factory=list)  # when each engine poll started

    @property
    def baseline_dph(self) -> float:
        if self.scenario.baseline.price == "audit_pick" and self.audit_pick:
            return float(self.audit_pick.get("dph_total") or 0.0)
        return float(self.dph or 0.0)

    @property
    def baseline_usd(self) -> float:
        return self.scenario.baseline.seconds * self.baseline_dph / 3600.0

    @property
    def ratio(self) -> float | None:
        """What the audit's approach would have cost over what the bot spent, for a failure only:
        a run that reached ready saved nothing (its user keeps it, with or without the bot)."""
        if self.verdict != "failed" or self.spent <= 0:
            return None
        return self.baseline_usd / self.spent

    @property
    def signal_to_decision(self) -> float | None:
        if self.decision_at is None or self.scenario.expect.signal_at is None:
            return None
        return self.decision_at - self.scenario.expect.signal_at

    def polls_between(self, start: float, end: float) -> int:
        """How many engine polls started from ``start`` to ``end`` (simulated seconds since create)."""
        return sum(1 for t in self.poll_times if start - 1e-6 <= t <= end + 1e-6)

    def drifted(self, *, tolerance: float | None = None) -> bool:
        """Whether the teardown came later than ``tolerance`` after the signal only because the polls
        ran late: the bot decided within as many polls as the tolerance allows, but the clock had
        moved on further (a fast simulated clock on a busy machine drifts; a FakeClock never does)."""
        signal, decided = self.scenario.expect.signal_at, self.decision_at
        if signal is None or decided is None:
            return False
        late_ok = self.poll_interval if tolerance is None else tolerance
        if decided - signal <= late_ok + 1e-6:
            return False
        polls = self.polls_between(signal, decided)
        return 0 < polls and polls * self.poll_interval <= late_ok + 1e-6

    def _preflight_mismatches(self) -> list[str]:
        """A scenario the preflight must catch: blocked, named in the approver's message, $0."""
        out: list[str] = []
        if not self.preflight_blocked:
            out.append("the preflight did not block the rent")
        missing = [s for s in self.scenario.preflight.get("contains", ()) if s not in self.preflight_message]
        if missing:
            out.append(f"the preflight's message does not name {', '.join(missing)}")
        if self.instance_id is not None or self.spent > 0:
            out.append(f"an instance was rented (spent ${self.spent:.4f})")
        return out

    def mismatches(self, *, tolerance: float | None = None) -> list[str]:
        """How this run differs from the scenario's expectation (empty when it matches).

        ``tolerance``: how late after the signal the decision may come (default: one poll).
        """
        exp = self.scenario.expect
        late_ok = self.poll_interval if tolerance is None else tolerance
        out: list[str] = []
        if self.scenario.preflight_blocks:
            return self._preflight_mismatches()
        # The bot's figure may trail Vast's by what one poll takes to notice a running container.
        slack = (self.dph or 0.0) * self.poll_interval / 3600 + 1e-4
        if abs(self.spent - self.sim_spent) > slack:
            out.append(f"the bot's cost ${self.spent:.4f} differs from what Vast billed ${self.sim_spent:.4f}")
        if self.verdict not in exp.verdicts:
            out.append(f"verdict {self.verdict}, expected {'/'.join(exp.verdicts)}")
        if exp.category and self.category != exp.category:
            out.append(f"cause {self.category}, expected {exp.category}")
        if exp.stop == "none":
            if self.decision_at is not None:
                out.append(f"torn down at {self.decision_at:.0f}s ({self.category}); expected to run on")
        elif self.decision_at is None:
            out.append(f"never torn down; expected at the {exp.stop} ({exp.signal_at:.0f}s)")
        else:
            assert exp.signal_at is not None
            delta = self.decision_at - exp.signal_at
            if delta < -1e-6:
                out.append(f"teardown at {self.decision_at:.0f}s, before the signal at {exp.signal_at:.0f}s")
            elif delta > late_ok + 1e-6:
                said = f"teardown at {self.decision_at:.0f}s, {delta:.0f}s after the signal (allowed {late_ok:.0f}s)"
                if self.drifted(tolerance=late_ok):
                    polls = self.polls_between(exp.signal_at, self.decision_at)
                    said += (f", yet at poll {polls} after it: the polls ran late ({DRIFT}, not the bot; "
                             "a lower --speed avoids it)")
                out.append(said)
        for key, wanted in (("text", exp.finding_contains), ("advice", exp.advice_contains)):
            said = str((self.conclusive or {}).get(key, ""))
            missing = [s for s in wanted if s not in said]
            if missing:
                out.append(f"conclusive finding's {key} does not name {', '.join(missing)}")
        if exp.max_severity is not None:
            limit = SEVERITY_RANK[exp.max_severity]
            worse = [f for f in self.findings if SEVERITY_RANK.get(str(f.get("severity")), 0) > limit]
            if worse:
                first = worse[0]
                out.append(f"{len(worse)} finding(s) above {exp.max_severity}, first: "
                           f"{first.get('severity')} {first.get('category')}: {str(first.get('text'))[:80]}")
        if exp.unique_findings:
            seen: set[tuple[str, str]] = set()
            for f in self.findings:
                posted = (str(f.get("category")), str(f.get("text")))
                if posted in seen:
                    out.append(f"finding posted twice: {posted[0]}: {posted[1][:80]}")
                    break
                seen.add(posted)
        if exp.country_not_in and (self.country is None or self.country in exp.country_not_in):
            out.append(f"rented a host in {self.country or 'an unknown country'} ({self.geolocation})")
        return out
