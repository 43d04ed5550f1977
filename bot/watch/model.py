"""The watch engine's vocabulary: milestones, categories, severities, findings, verdicts.

These names are contracts (operators, the channel and ``classify --json`` show them): keep them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Milestone(StrEnum):
    # From the engine
    INSTANCE_CREATED = "instance_created"
    CONTAINER_RUNNING = "container_running"
    SSH_READY = "ssh_ready"
    # From the log
    PROVISIONING_STARTED = "provisioning_started"
    SCRIPT_FETCHED = "script_fetched"
    PACKAGES_INSTALLED = "packages_installed"
    TORCH_READY = "torch_ready"
    NODES_INSTALLED = "nodes_installed"
    MODELS_DOWNLOADED = "models_downloaded"
    PROVISIONING_COMPLETE = "provisioning_complete"
    COMFYUI_READY = "comfyui_ready"
    TUNNEL_READY = "tunnel_ready"
    PORTAL_READY = "portal_ready"


MILESTONE_ORDER: tuple[Milestone, ...] = tuple(Milestone)


class Category(StrEnum):
    PLATFORM_NOISE = "platform_noise"
    CONFIG = "config"
    NETWORK = "network"
    DEPENDENCY = "dependency"
    DEPENDENCY_FATAL = "dependency_fatal"
    DISK_FULL = "disk_full"
    GPU = "gpu"
    AUTH = "auth"
    SCRIPT_MISSING = "script_missing"
    STALLED = "stalled"
    SSH_UNREACHABLE = "ssh_unreachable"
    UNKNOWN = "unknown"


class Severity(StrEnum):
    INFO = "info"
    WARN = "warn"
    ERROR = "error"
    FATAL = "fatal"

    @property
    def rank(self) -> int:
        return ("info", "warn", "error", "fatal").index(self.value)


class Verdict(StrEnum):
    READY = "ready"
    DEGRADED = "degraded"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"


@dataclass(frozen=True, slots=True)
class Finding:
    """A classified line (or an engine observation such as a stall) worth knowing about."""

    category: Category
    severity: Severity
    text: str  # the (redacted) evidence line
    advice: str = ""
    line: int | None = None  # 1-based line number in the log, when from a log
    stops_run: bool = False
    rule: str = ""  # id of the rule that matched

    def to_dict(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "category": self.category.value,
            "severity": self.severity.value,
            "text": self.text,
            "advice": self.advice,
        }


@dataclass(frozen=True, slots=True)
class MilestoneHit:
    """A milestone seen in the log (or by the engine)."""

    name: Milestone
    line: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name.value, "line": self.line, **self.detail}
