"""Operator settings, read from the environment and ``.env`` (pydantic-settings).

The environment names are contracts: operators and other tools rely on them, keep them exact.
Secrets are ``SecretStr`` and never printed. ``missing_for(command)`` lists every setting a
command lacks at once, each with what it is for.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bot.durations import parse_duration
from bot.provisioning.contract import DEFAULT_LOG_PATH

Duration = Annotated[float, Field(ge=0)]


class ConfigError(Exception):
    """A setting is missing or invalid. ``problems`` holds one readable line per setting."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


# What each setting is for: shown when it is missing and used to write .env.example.
SETTING_HELP: dict[str, str] = {
    "DISCORD_TOKEN": "the bot token from the Discord developer portal (Bot > Reset Token)",
    "DISCORD_GUILD_ID": "the id of the Discord server the slash commands are registered in",
    "NOTIFY_CHANNEL_ID": "the channel where the watcher posts milestones, findings and receipts",
    "APPROVER_ROLE_ID": "the role whose members may approve rentals and teardowns",
    "VAST_API_KEY": "a Vast.ai API key (console.vast.ai > Account > API Keys)",
    "VAST_API_URL": "the Vast.ai API base URL",
    "VAST_BACKEND": "'vast' for the real Vast.ai API, 'sim' for the built-in simulator (no spend)",
    "SIM_SCENARIO": "with VAST_BACKEND=sim, the rehearsal scenario every rented instance plays (see demo --list)",
    "DATABASE_PATH": "the SQLite file holding rentals, events and approvals",
    "SSH_KEY_PATH": "the private SSH key registered on the Vast.ai account, used to read logs",
    "PROVISION_SCRIPT_URL": "the URL of the provisioning script the instances run (deploy/provision.sh)",
    "PROVISION_SCRIPT_SHA256": "optional SHA-256 pin of the provisioning script",
    "PROVISION_NODES": "optional custom nodes for the script: space-separated url[@ref][!] (! = required)",
    "PROVISION_MODELS": "optional models for the script: space-separated dir|url[|min_bytes[|size_bytes]]",
    "PROVISION_MANIFEST": "optional URL of a manifest file listing nodes, models, apt and pip packages",
    "PROVISION_LOG_PATH": "where the provisioning script writes its log on the instance (also read by the watcher)",
    "EXCLUDED_COUNTRIES": "comma-separated country codes never rented from",
    "MAX_PRICE_PER_HOUR": "the highest $/h an offer may cost",
    "POLL_INTERVAL": "how often each rental is polled (90s, 10m, 1h or seconds)",
    "HEARTBEAT_PATH": "the file `run` rewrites after every watch poll and `check --running` reads",
    "BUDGET_TEAM_DAILY": "team budget in dollars per UTC day (0 = none)",
    "BUDGET_TEAM_WEEKLY": "team budget in dollars per UTC week, Monday to Sunday (0 = none)",
    "BUDGET_USER_DAILY": "budget of each requester in dollars per UTC day (0 = none)",
    "BUDGET_USER_WEEKLY": "budget of each requester in dollars per UTC week (0 = none)",
    "BUDGET_SOFT_THRESHOLD": "share of a budget (0-1) at which the channel is warned and new rents need an approver",
    "BUDGET_RENT_ESTIMATE": "how long a new rental is assumed to run when checking whether it would cross a budget",
    "BUDGET_HARD_DEFAULT_ACTION": "what a teardown proposal made at a hard budget limit does when nobody answers",
    "BUDGET_CHECK_INTERVAL": "how often the bot checks spend against the budgets",
    "HOST_AVOID_WINDOW": "how long a machine that failed a rental is left out of offers",
}


def _blank_to_none(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        return None
    return value


class Settings(BaseSettings):
    """All settings. Field names map 1:1 to upper-case environment variables."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        case_sensitive=False,
        extra="ignore",
        hide_input_in_errors=True,
    )

    # Discord
    discord_token: SecretStr | None = None
    discord_guild_id: int | None = Field(default=None, gt=0)
    notify_channel_id: int | None = Field(default=None, gt=0)
    approver_role_id: int | None = Field(default=None, gt=0)

    # Vast
    vast_api_key: SecretStr | None = None
    vast_api_url: str = "https://console.vast.ai"
    vast_backend: Literal["vast", "sim"] = "vast"
    # Where the Vast key came from, for `check` (not a setting: the CLI fills it in).
    _key_source: str = PrivateAttr(default="VAST_API_KEY")
    sim_scenario: str = "happy"

    # Storage and SSH
    database_path: Path = Path("data/vastops.db")
    ssh_key_path: Path | None = None
    # Liveness file for monitors; unset = next to the database (vastops.db -> vastops.heartbeat).
    heartbeat_path: Path | None = None

    # Provisioning contract
    provision_script_url: str | None = None
    provision_script_sha256: str | None = None
    provision_log_path: str = DEFAULT_LOG_PATH
    docker_image: str = "vastai/comfyui:@vastai-automatic-tag"
    disk_gb: int = Field(default=80, ge=10, le=2000)
    provision_nodes: str | None = None
    provision_models: str | None = None
    provision_manifest: str | None = None
    hf_token: SecretStr | None = None
    civitai_token: SecretStr | None = None

    # Offer policy
    excluded_countries: Annotated[list[str], NoDecode] = ["CN", "UA"]
    max_price_per_hour: float = Field(default=1.0, gt=0, le=200)
    min_reliability: float = Field(default=0.95, ge=0, le=1)

    # Watch policy (durations accept 90s / 10m / 1h / seconds)
    poll_interval: Duration = 15.0
    ssh_boot_grace: Duration = 180.0
    stall_timeout: Duration = 300.0
    # A download whose byte counter (our script's or the tool's own progress line) has not moved
    # this long is a stall, even while heartbeat lines keep the log growing.
    download_stall_timeout: Duration = 120.0
    # Once the instance runs with its SSH port mapped, SSH refused this long makes the bot read the
    # container log; no provisioning there and nothing new for as long again means SSH never comes.
    ssh_refused_grace: Duration = 120.0
    container_running_deadline: Duration = 1800.0
    ssh_ready_deadline: Duration = 600.0
    provisioning_started_deadline: Duration = 600.0
    comfyui_ready_deadline: Duration = 2700.0
    provision_deadline: Duration = 3600.0
    rental_dollar_cap: float = Field(default=5.0, gt=0)
    cost_step: float = Field(default=0.25, gt=0)
    teardown_policy: Literal["destroy", "propose"] = "destroy"
    proposal_timeout: Duration = 600.0

    # Approvals
    approval_timeout: Duration = 1800.0
    self_approve_max_price: float = Field(default=0.5, ge=0)

    # Commands: per-user cooldown between two runs of /rent, /status or /logs (0 = none)
    command_cooldown: Duration = 5.0
    # Guardrails: budgets (dollars; 0 = no budget) and host reputation
    budget_team_daily: float = Field(default=0.0, ge=0)
    budget_team_weekly: float = Field(default=0.0, ge=0)
    budget_user_daily: float = Field(default=0.0, ge=0)
    budget_user_weekly: float = Field(default=0.0, ge=0)
    budget_soft_threshold: float = Field(default=0.8, gt=0, le=1)
    budget_rent_estimate: Duration = 3600.0
    budget_hard_default_action: Literal["keep", "destroy"] = "keep"
    budget_check_interval: Duration = 300.0
    host_avoid_window: Duration = 7 * 86400.0
    # Guardrails: the idle lease and the re-checks after rent
    lease_duration: Duration = 7200.0
    lease_max_total: Duration = 8 * 3600.0
    lease_warn_before: Duration = 600.0
    lease_idle_timeout: Duration = 1800.0
    recheck_price_tolerance: float = Field(default=0.05, ge=0, le=1)

    @field_validator(
        "discord_token", "vast_api_key", "hf_token", "civitai_token", "discord_guild_id",
        "notify_channel_id", "approver_role_id", "ssh_key_path", "heartbeat_path", "provision_script_url",
        "provision_script_sha256", "provision_nodes", "provision_models", "provision_manifest", mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return _blank_to_none(value)

    @field_validator(
        "poll_interval", "ssh_boot_grace", "stall_timeout", "download_stall_timeout", "ssh_refused_grace",
        "container_running_deadline",
        "ssh_ready_deadline", "provisioning_started_deadline", "comfyui_ready_deadline",
        "provision_deadline", "proposal_timeout", "approval_timeout", "command_cooldown", "budget_rent_estimate",
        "budget_check_interval", "host_avoid_window", "lease_duration", "lease_max_total", "lease_warn_before",
        "lease_idle_timeout", mode="before",
    )
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)

    @field_validator("lease_duration")
    @classmethod
    def _lease_floor(cls, value: float) -> float:
        if value < 60:
            raise ValueError("must be at least 1m: the requester is warned before the lease ends")
        return value

    @field_validator("poll_interval")
    @classmethod
    def _poll_floor(cls, value: float) -> float:
        if value < 1:
            raise ValueError("must be at least 1s so the bot does not hammer the Vast API")
        return value

    @field_validator("excluded_countries", mode="before")
    @classmethod
    def _countries(cls, value: Any) -> list[str]:
        if value is None:
            return []
        items = value.split(",") if isinstance(value, str) else list(value)
        codes = [str(item).strip().upper() for item in items if str(item).strip()]
        for code in codes:
            if not re.fullmatch(r"[A-Z]{2}", code):
                raise ValueError(f"{code!r} is not a two-letter country code (e.g. CN,UA)")
        return codes

    @field_validator("provision_script_sha256")
    @classmethod
    def _sha(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ValueError("must be 64 hexadecimal characters (the output of sha256sum)")
        return value

    @field_validator("provision_script_url", "vast_api_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/") if value.count("/") <= 3 else value

    @field_validator("provision_log_path")
    @classmethod
    def _abs_path(cls, value: str) -> str:
        if not value.startswith("/") or any(c in value for c in "\n\r\0 '\"$`"):
            raise ValueError("must be an absolute path on the instance without spaces or quotes")
        return value

    # ---------------------------------------------------------------- helpers
    @property
    def is_sim(self) -> bool:
        return self.vast_backend == "sim"

    @property
    def heartbeat_file(self) -> Path:
        """Where `run` writes its heartbeat: HEARTBEAT_PATH, or beside the database."""
        return self.heartbeat_path or self.database_path.with_suffix(".heartbeat")

    def secret_values(self) -> dict[str, str]:
        """Every secret the bot holds, by setting name, for redaction."""
        out: dict[str, str] = {}
        for name in ("discord_token", "vast_api_key", "hf_token", "civitai_token"):
            secret = getattr(self, name)
            if secret is not None and secret.get_secret_value():
                out[name.upper()] = secret.get_secret_value()
        return out

    def missing_for(self, command: str) -> list[tuple[str, str]]:
        """(setting, what it is for) for each setting ``command`` needs but lacks."""
        need: list[str] = []
        if command == "run" or (command == "check" and not self.is_sim):
            need += ["DISCORD_TOKEN", "DISCORD_GUILD_ID", "NOTIFY_CHANNEL_ID", "APPROVER_ROLE_ID"]
        if command in ("run", "check") and not self.is_sim:
            need += ["VAST_API_KEY", "SSH_KEY_PATH", "PROVISION_SCRIPT_URL"]
        if command in ("status",) and not self.is_sim:
            need += ["VAST_API_KEY"]
        return [(n, SETTING_HELP[n]) for n in need if getattr(self, n.lower()) is None]


# ---------------------------------------------------------------- operator conveniences
# The official vastai CLI stores its key here (`vastai set api-key`); reading it lets a vastai user's
# setup work as is. Only when VAST_API_KEY is set nowhere else.
VASTAI_KEY_FILE = Path("~/.config/vastai/vast_api_key")

# Environment variables that are not settings but may sit in .env without being a mistake.
_NOT_SETTINGS = frozenset({"PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "TZ", "LANG", "LC_ALL"})


def setting_names() -> list[str]:
    """Every setting's environment name."""
    return [name.upper() for name in Settings.model_fields]


def closest_setting(name: str) -> str | None:
    """The real setting a mistyped name most likely meant (MAX_PRICE_PER_HR -> MAX_PRICE_PER_HOUR)."""
    import difflib

    names = setting_names()
    upper = name.upper()
    found = difflib.get_close_matches(upper, names, n=1, cutoff=0.75)
    if found:
        return found[0]
    # A missing or extra word (EXCLUDE_COUNTRIES, PRICE_MAX) is close word-wise even when the
    # letters differ: score by shared words.
    words = set(upper.split("_"))
    best, score = None, 0.0
    for candidate in names:
        cw = set(candidate.split("_"))
        shared = sum(max(difflib.SequenceMatcher(None, w, c).ratio() for c in cw) >= 0.8 for w in words)
        ratio = shared / max(len(words), len(cw))
        if ratio > score:
            best, score = candidate, ratio
    return best if score >= 0.5 else None


def env_file_keys(path: Path = Path(".env")) -> list[str]:
    """The variable names assigned in an env file (``KEY=value``, ``export KEY=value``), in order."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    keys = []
    for line in text.splitlines():
        match = re.match(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=", line)
        if match:
            keys.append(match.group(1))
    return keys


def unknown_setting_keys(env_file: Path = Path(".env"),
                         environ: dict[str, str] | None = None) -> list[tuple[str, str, str | None]]:
    """(name, where, closest real setting) for each key that looks meant as a setting but is not one.

    Every unknown key in the env file counts (the file exists only for settings); in the process
    environment, which holds many unrelated variables, only a name close to a setting's does.
    """
    import os

    known = set(setting_names())
    out: list[tuple[str, str, str | None]] = []
    seen: set[str] = set()
    for key in env_file_keys(env_file):
        upper = key.upper()
        if upper in known or upper in _NOT_SETTINGS or upper in seen:
            continue
        seen.add(upper)
        out.append((key, str(env_file), closest_setting(key)))
    for key in (os.environ if environ is None else environ):
        upper = key.upper()
        if upper in known or upper in seen:
            continue
        import difflib

        near = difflib.get_close_matches(upper, sorted(known), n=1, cutoff=0.85)
        if near:
            seen.add(upper)
            out.append((key, "the environment", near[0]))
    return out


def vastai_key_from_file(path: Path = VASTAI_KEY_FILE) -> str | None:
    """The key the vastai CLI saved, or None when there is no such readable, non-empty file."""
    try:
        key = path.expanduser().read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return key or None


def load_settings(**overrides: Any) -> Settings:
    """Load settings or raise ``ConfigError`` listing every invalid value (never the value)."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = str(err["loc"][0]).upper() if err["loc"] else "settings"
            msg = str(err["msg"]).removeprefix("Value error, ")
            problems.append(f"{name}: {msg}")
        raise ConfigError(problems) from None
