"""What the engine keeps per rental: the policy it applies, the memory it persists across
restarts (watch_state.data), and the live watch (SSH session, line assembly, analysis)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Protocol

from bot.db.models import Rental
from bot.settings import Settings
from bot.vast.models import Instance
from bot.watch.analysis import RunAnalysis
from bot.watch.classifier import Classifier
from bot.watch.lines import LineAssembler
from bot.watch.model import Milestone, Verdict
from bot.watch.redact import Redactor
from bot.watch.ssh import SshBackoff


class SshConnector(Protocol):
    """Opens an SSH log session to an instance (``bot.watch.ssh.SshLogSession.connect``)."""

    async def __call__(self, endpoint: Any, *, key_path: Path | None, known_host_key: str | None,
                       connect_timeout: float) -> Any: ...


@dataclass
class WatchPolicy:
    """The timing and money rules of a watch, from settings."""

    poll_interval: float = 15.0
    ssh_boot_grace: float = 180.0
    stall_timeout: float = 300.0
    # A download whose byte counter has not moved this long is stalled, heartbeat or not.
    download_stall_timeout: float = 120.0
    # SSH refused this long after the instance runs with its port mapped: read the container log;
    # if it shows no provisioning and nothing new for as long again, SSH will not come.
    ssh_refused_grace: float = 120.0
    container_running_deadline: float = 1800.0
    ssh_ready_deadline: float = 600.0
    provisioning_started_deadline: float = 600.0
    comfyui_ready_deadline: float = 2700.0
    provision_deadline: float = 3600.0
    rental_dollar_cap: float = 5.0
    cost_step: float = 0.25
    teardown_policy: Literal["destroy", "propose"] = "destroy"
    proposal_timeout: float = 600.0
    log_path: str = "/workspace/vastops/provision.log"
    ssh_key_path: Path | None = None
    connect_timeout: float = 10.0
    log_missing_grace: float | None = None  # default: two polls
    # How long a rental left in creating without an instance id (a crash or a lost answer) is
    # looked for by its label before it is called create_failed; Vast's list may lag a create.
    create_reconcile_grace: float = 300.0
    # How long an instance may show offline/unknown (host out of touch) before it is given up.
    host_lost_grace: float = 300.0
    # Read the container log of an SSH-less rental at most every this many polls (2 API calls each).
    container_log_every: int = 4
    # Lists of the account that must miss an instance before it counts as gone (a 404 never does).
    gone_after_absent: int = 2

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> WatchPolicy:
        """The policy from settings: every field named like a setting takes the setting's value."""
        known = type(settings).model_fields
        values: dict[str, Any] = {f.name: getattr(settings, f.name) for f in fields(cls) if f.name in known}
        values["log_path"] = settings.provision_log_path
        values["ssh_key_path"] = settings.ssh_key_path
        values.update(overrides)
        return cls(**values)

    @property
    def missing_grace(self) -> float:
        return self.log_missing_grace if self.log_missing_grace is not None else 2 * self.poll_interval


@dataclass
class WatchMemory:
    """What a watch must remember across restarts (stored as JSON in watch_state.data)."""

    milestones: dict[str, float] = field(default_factory=dict)
    lineno: int = 0
    noise: dict[str, int] = field(default_factory=dict)
    noise_posted: int = 0
    findings: list[dict[str, Any]] = field(default_factory=list)
    last_growth: float | None = None  # last *progress* (not noise, heartbeats or a stuck byte counter)
    progress_bytes: dict[str, int] = field(default_factory=dict)  # model.progress bytes per file
    # Transfers under way: key -> {"bytes", "since" (when the counter last moved), "total", "tool"}.
    downloads: dict[str, dict[str, Any]] = field(default_factory=dict)
    ssh_port_seen_at: float | None = None  # first refusal with the SSH port mapped (this SSH-less stretch)
    container_novel_at: float | None = None  # last container-log read that showed something new
    container_read_at: float | None = None  # last container-log read
    container_seen: list[str] = field(default_factory=list)  # digests of container-log lines, digits folded
    log_missing_since: float | None = None
    ssh_fail_since: float | None = None
    ssh_unreachable_reported: bool = False
    fallback: bool = False
    fallback_only: bool = False  # SSH refused for good (auth / changed host key)
    fallback_tail: list[str] = field(default_factory=list)
    cost_reported: float = 0.0
    decided: str | None = None  # reason of the teardown decision, once taken
    decided_key: str | None = None  # the rule behind it (what a human declines)
    declined: list[str] = field(default_factory=list)  # teardown rules a human declined
    verdict: str = Verdict.IN_PROGRESS.value
    comfy_pending: dict[str, Any] | None = None
    rotations: int = 0
    held: list[dict[str, Any]] = field(default_factory=list)  # tunnel/portal hits waiting for ComfyUI
    service_offsets: dict[str, int] = field(default_factory=dict)  # per service log read after ready
    service_polls: int = 0
    last_sample: float | None = None
    destroy_failures: int = 0
    label_missing_since: float | None = None  # creating, no instance id, none carries the label
    rate_seen: float | None = None  # the $/h Vast last reported for the instance
    rate_since: float | None = None  # when it last changed (None: the whole run at one rate)
    cost_base: float = 0.0  # dollars billed before ``rate_since``
    host_lost_since: float | None = None  # first poll of an offline/unknown status in a row
    absent_lists: int = 0  # successful account lists in a row that did not show the instance
    destroy_sent_at: float | None = None  # when Vast last accepted a destroy of the instance
    skew_warned: bool = False  # Vast's start_date far from the bot's clock was reported
    container_log_poll: int = 0  # polls since the container log was last read

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> WatchMemory:
        memory = cls()
        for key, value in (data or {}).items():
            if hasattr(memory, key):
                setattr(memory, key, value)
        return memory


class RentalWatch:
    """Live state of one rental's watch: the SSH session, line reassembly and analysis."""

    def __init__(self, rental: Rental, memory: WatchMemory, *, log_offset: int, host_key: str | None,
                 classifier: Classifier, redactor: Redactor) -> None:
        self.rental = rental
        self.memory = memory
        self.log_offset = log_offset
        self.host_key = host_key
        self.session: Any = None
        self.assembler = LineAssembler()
        self.analysis = RunAnalysis(classifier, redactor)
        self.next_ssh_attempt = 0.0
        self.ssh_backoff: SshBackoff | None = None  # while SSH keeps failing: jittered, capped delays
        self.instance: Instance | None = None
        self.lock = asyncio.Lock()
        # Events derived from log lines wait here and are stored together with the offset and
        # memory that produced them (one transaction), so a crash neither loses nor repeats them.
        self.buffer: list[tuple[str, dict[str, Any], float]] = []
        # After a restart: bytes [0, replay_to) were analysed by the previous process. They are
        # read again once, silently, to rebuild the analysis (attempts, node activity, causes);
        # events for them were already stored, so none is emitted twice.
        self.replay_to = 0
        self.replay_offset = 0
        self.replay_lineno = 0
        self.replay_assembler: LineAssembler | None = None
        # When this process last actually read the log (file or container log). The stall clock
        # only runs up to there: a run nobody could look at (the bot down, SSH refused) is not stalled.
        self.last_read: float | None = None
        # A teardown decision the database has not recorded yet (it refused the write): retried at
        # every poll until it holds; a destroy is sent to Vast meanwhile all the same.
        self.pending_decision: tuple[str, str, Any] | None = None
        # A teardown under way in this process: why, by whom, the last destroy sent, and whether
        # Vast's list has confirmed the instance gone (then only the records remain to be written).
        self.destroy_reason: str | None = None
        self.destroy_by: str | None = None
        self.destroy_resent_at: float | None = None
        self.confirmed_gone = False
        # A container-log read under way beside the polls (Vast uploads the log first).
        self.logs_task: asyncio.Task[str] | None = None

    def reached(self, milestone: Milestone) -> bool:
        return milestone.value in self.memory.milestones
