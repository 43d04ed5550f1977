"""The preflight's report: one line per check, what it saw and how to fix it, short enough for a phone."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, urlsplit

Status = Literal["ok", "warn", "fail"]
MARK = {"ok": "✅", "warn": "⚠️", "fail": "❌"}
# Query keys that carry credentials: such a URL would put a secret into logs and events.
SECRET_QUERY = re.compile(
    r"(?i)^(token|access_token|api_key|apikey|key|sig|signature|x-amz-signature|x-amz-credential|"
    r"x-amz-security-token|auth|password)$"
)


@dataclass(frozen=True)
class PreflightCheck:
    """One check: ``detail`` says what was seen, ``fix`` what to do about it (empty when ok)."""

    name: str
    status: Status
    detail: str
    fix: str = ""


@dataclass
class PreflightReport:
    """All checks in the order they ran."""

    checks: list[PreflightCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(c.status == "fail" for c in self.checks)

    @property
    def failures(self) -> list[PreflightCheck]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def warnings(self) -> list[PreflightCheck]:
        return [c for c in self.checks if c.status == "warn"]

    def get(self, name: str) -> PreflightCheck | None:
        return next((c for c in self.checks if c.name == name), None)

    def lines(self) -> list[str]:
        """One short line per check, plus a "fix:" line under each one that is not ok."""
        out: list[str] = []
        for check in self.checks:
            out.append(f"{MARK[check.status]} {check.name}: {check.detail}")
            if check.fix and check.status != "ok":
                out.append(f"   fix: {check.fix}")
        return out

    def render(self) -> str:
        n = len(self.failures)
        head = "Preflight passed" if self.ok else f"Preflight FAILED ({n} problem(s)) - not renting"
        return "\n".join([head, *self.lines()])

    def add(self, name: str, status: Status, detail: str, fix: str = "") -> PreflightCheck:
        check = PreflightCheck(name, status, detail, fix)
        self.checks.append(check)
        return check


def host_path(url: str) -> str:
    """host + path of a URL: what may be shown of it (no query, no credentials)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return host + parts.path


def short_url(shown: str, limit: int = 60) -> str:
    """A long host+path shortened to host/…/file so a phone line stays readable."""
    if len(shown) <= limit:
        return shown
    host, _, path = shown.partition("/")
    return f"{host}/…/{path.rsplit('/', 1)[-1]}"


def url_secrets(url: str) -> list[str]:
    """The credential-carrying parts of ``url`` (query keys, ``user:password@``), never their values."""
    parts = urlsplit(url)
    keys = sorted({k for k, _ in parse_qsl(parts.query, keep_blank_values=True) if SECRET_QUERY.match(k)})
    if parts.username or parts.password:
        keys.insert(0, "user:password@")
    return keys
