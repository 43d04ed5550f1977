"""What the bot sends Vast to start an instance: the env dict and the onstart line that runs our script.

The onstart fetches ``PROV_SCRIPT_URL`` with a failing HTTP client, checks the SHA-256 pin and that the
body is a shell script, then runs it in the background. Any failure is a fatal ``script_missing``
event in ``PROV_LOG_PATH`` and a stop: there is no silent fallback to the image's default script
(the audit's stale gist URL and ``gistfile1.txt`` runs billed for hours on the wrong script).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bot.provisioning.contract import (
    BOOTSTRAP_ATTEMPT,
    ENV_CIVITAI_TOKEN,
    ENV_EVENT_PREFIX,
    ENV_HF_TOKEN,
    ENV_LOG_PATH,
    ENV_MANIFEST,
    ENV_MODELS,
    ENV_NODES,
    ENV_RUN_ID,
    ENV_SCRIPT_SHA256,
    ENV_SCRIPT_URL,
    EVENT_PREFIX,
    SCHEMA_VERSION,
)
from bot.settings import Settings

# Vast create-instance validation (reference/vast-api.md §3).
VAST_ENV_VALUE_MAX = 255
VAST_ENV_TOTAL_MAX = 32768
VAST_ONSTART_MAX = 4096
VAST_LABEL_MAX = 256
VAST_IMAGE_MAX = 1024

# ComfyUI and the Instance Portal only: every extra portal entry is one more SSH forward that can fail
# ("remote port forwarding failed"), and the portal entry must stay or the quick tunnels go too.
PORTAL_CONFIG = "localhost:1111:11111:/:Instance Portal|localhost:8188:18188:/:ComfyUI"
PUBLISHED_PORTS = (1111, 8188)
# SSH through Vast's proxy and directly; no Jupyter, whose boot logic re-adds portal entries.
DEFAULT_RUNTYPE = "ssh_direc ssh_proxy"
# The vastai/* images boot (supervisor, portal, ComfyUI) only when onstart calls this.
VASTAI_ENTRYPOINT = "entrypoint.sh"

# Where the background script's stdout goes: PID 1's stdout is the container log Vast shows.
# Overridable on the instance (and in tests) through this variable.
ENV_STDOUT = "PROV_STDOUT"
DEFAULT_STDOUT = "/proc/1/fd/1"

# Setting this would make vastai images fetch a script themselves and boot on regardless if the fetch
# fails; our onstart owns the fetch so that a missing script stops the instance instead.
FORBIDDEN_ENV = ("PROVISIONING_SCRIPT",)

SECRET_ENV = (ENV_HF_TOKEN, ENV_CIVITAI_TOKEN)
_RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class LaunchError(ValueError):
    """The launch cannot be built as configured. ``problems`` holds one readable line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass(frozen=True)
class LaunchSpec:
    """Everything Vast's create-instance call needs that comes from the provisioning contract."""

    image: str
    disk_gb: int
    runtype: str
    label: str
    env: dict[str, str]
    onstart: str
    secret_env: frozenset[str] = field(default_factory=frozenset)

    def create_body(self) -> dict[str, Any]:
        """The body of ``PUT /api/v0/asks/{offer_id}/`` (on-demand; add ``price`` for a bid)."""
        return {
            "client_id": "me",
            "image": self.image,
            "disk": self.disk_gb,
            "label": self.label,
            "runtype": self.runtype,
            "onstart": self.onstart,
            "env": dict(self.env),
            "cancel_unavail": True,
        }

    def redacted_env(self) -> dict[str, str]:
        """The env with secret values replaced, safe to log or show."""
        return {k: ("«redacted»" if k in self.secret_env else v) for k, v in self.env.items()}


def onstart_script(*, entrypoint: str | None = VASTAI_ENTRYPOINT) -> str:
    """The onstart text: fetch, verify, run the script in the background, then the image's entrypoint.

    Reads everything from the instance env that ``build_launch`` sets. ``entrypoint`` is the image's own
    boot command, run in the foreground last (as Vast's template does) and only after the script is
    running; ``None`` for images that boot on their own.
    """
    # A printf format: run id, time, host+path and why are filled in on the instance.
    event = (
        f'{{"v":{SCHEMA_VERSION},"run":"%s","att":{BOOTSTRAP_ATTEMPT},"seq":0,"ts":"%s",'
        f'"ev":"script_missing","st":"fail","url":"%s","why":"%s"}}'
    )
    lines = [
        "# vastops onstart: fetch + verify the provisioning script, run it in the background. No fallback.",
        f'L="${{{ENV_LOG_PATH}:-}}"',
        # The line is "<prefix without its trailing space> <json>", whether or not Vast kept the space.
        f'P="${{{ENV_EVENT_PREFIX}:-{EVENT_PREFIX}}}"',
        'P="${P% }"',
        'D="${L%/*}"',
        '[ -n "$L" ] || D=/tmp',
        'mkdir -p "$D"',
        'F="$D/vastops-provision.sh"',
        f'U="${{{ENV_SCRIPT_URL}:-}}"',
        # Events may show host + path of the URL, never a query string or credentials.
        'H="${U%%[?#]*}"; H="${H#*://}"; H="${H#*@}"',
        "vastops_missing() {",
        f"  printf '%s {event}\\n' \"$P\" \\",
        f'    "$(printf %s "${{{ENV_RUN_ID}:-unknown}}" | tr -cd \'A-Za-z0-9._-\')" '
        '"$(date -u +%Y-%m-%dT%H:%M:%SZ)" \\',
        '    "$(printf %s "$H" | tr -cd \'A-Za-z0-9._~/:%+-\')" "$1" | tee -a "${L:-/dev/null}"',
        '  rm -f "$F.part"',
        "  exit 1",
        "}",
        '[ -n "$U" ] || vastops_missing "PROV_SCRIPT_URL is not set"',
        'C=$(curl -fsSL --retry 5 --retry-connrefused --retry-delay 2 --max-time 120 -o "$F.part" '
        '-w "%{http_code}" "$U") || vastops_missing "download failed: http ${C:-000}, curl exit $?"',
        '[ -s "$F.part" ] || vastops_missing "empty body (http $C)"',
        'if [ "$(head -c 2 "$F.part")" != "#!" ]; then',
        '  vastops_missing "not a shell script: starts with '
        '$(head -c 24 "$F.part" | tr -cd \'A-Za-z0-9 <>!/._-\')"',
        "fi",
        f'W=$(printf %s "${{{ENV_SCRIPT_SHA256}:-}}" | tr A-F a-f)',
        'if [ -n "$W" ]; then',
        '  S=$(sha256sum "$F.part" | cut -d" " -f1)',
        '  [ "$S" = "$W" ] || '
        'vastops_missing "sha256 mismatch: got $(printf %.12s "$S") want $(printf %.12s "$W")"',
        "fi",
        'mv -f "$F.part" "$F"',
        f'O="${{{ENV_STDOUT}:-{DEFAULT_STDOUT}}}"',
        '{ : >>"$O"; } 2>/dev/null || O=/dev/null',
        # setsid + nohup: the script outlives this shell and whatever runs onstart.
        'S=; command -v setsid >/dev/null 2>&1 && S=setsid',
        'nohup $S bash "$F" >>"$O" 2>&1 </dev/null &',
        'echo "vastops: provisioning script started (pid $!), log $L"',
    ]
    if entrypoint:
        lines += [
            f"if command -v {entrypoint} >/dev/null 2>&1; then {entrypoint}; "
            f'else echo "vastops: {entrypoint} not found; the image boots on its own"; fi',
        ]
    return "\n".join(lines) + "\n"


def vast_limit_problems(
    env: Mapping[str, str], onstart: str, *, label: str = "", image: str = ""
) -> list[str]:
    """Every way ``env``/``onstart``/``label``/``image`` break Vast's create limits, one line each."""
    problems: list[str] = []
    for key, value in env.items():
        if len(value) > VAST_ENV_VALUE_MAX:
            hint = ""
            if key in (ENV_NODES, ENV_MODELS):
                hint = f"; put the list in a manifest file and pass its URL as {ENV_MANIFEST}"
            problems.append(
                f"env {key} is {len(value)} characters; Vast allows {VAST_ENV_VALUE_MAX} per value{hint}"
            )
    total = len(json.dumps(dict(env), separators=(",", ":")))
    if total > VAST_ENV_TOTAL_MAX:
        problems.append(f"env is {total} characters in all; Vast allows {VAST_ENV_TOTAL_MAX}")
    if len(onstart) > VAST_ONSTART_MAX:
        problems.append(f"onstart is {len(onstart)} characters; Vast allows {VAST_ONSTART_MAX}")
    if len(label) > VAST_LABEL_MAX:
        problems.append(f"label is {len(label)} characters; Vast allows {VAST_LABEL_MAX}")
    if len(image) > VAST_IMAGE_MAX:
        problems.append(f"image name is {len(image)} characters; Vast allows {VAST_IMAGE_MAX}")
    return problems


def _optional_setting(settings: Settings, name: str) -> str | None:
    # Node/model lists are optional settings the lead may add; read them only if present.
    value = getattr(settings, name, None)
    if value is None:
        return None
    if hasattr(value, "get_secret_value"):
        value = value.get_secret_value()
    value = str(value).strip()
    return value or None


def build_launch(
    settings: Settings, *, run_id: str, label: str, extra_env: dict[str, str] | None = None
) -> LaunchSpec:
    """The env, onstart, image, disk and runtype for one rental, checked against Vast's limits.

    ``PROV_LOG_PATH`` is ``settings.provision_log_path``, the same setting the collector tails.
    ``extra_env`` may add variables (e.g. ``PROV_NODES``) but not change the contract ones.
    Raises ``LaunchError`` listing every problem.
    """
    problems: list[str] = []
    if not _RUN_ID_RE.fullmatch(run_id):
        problems.append(f"run id {run_id!r} must be 1-64 letters, digits, '.', '_' or '-'")
    if settings.provision_script_url is None:
        problems.append("PROVISION_SCRIPT_URL is not set: the instance would have no script to run")

    env: dict[str, str] = {f"-p {port}:{port}": "1" for port in PUBLISHED_PORTS}
    env.update({
        "PORTAL_CONFIG": PORTAL_CONFIG,
        "OPEN_BUTTON_PORT": str(PUBLISHED_PORTS[0]),
        ENV_RUN_ID: run_id,
        ENV_EVENT_PREFIX: EVENT_PREFIX,
        ENV_LOG_PATH: settings.provision_log_path,
        ENV_SCRIPT_URL: settings.provision_script_url or "",
    })
    if settings.provision_script_sha256:
        env[ENV_SCRIPT_SHA256] = settings.provision_script_sha256
    for env_name, setting in (
        (ENV_NODES, "provision_nodes"),
        (ENV_MODELS, "provision_models"),
        (ENV_MANIFEST, "provision_manifest"),
    ):
        value = _optional_setting(settings, setting)
        if value is not None:
            env[env_name] = value
    secrets: set[str] = set()
    for env_name, secret in ((ENV_HF_TOKEN, settings.hf_token), (ENV_CIVITAI_TOKEN, settings.civitai_token)):
        if secret is not None and secret.get_secret_value():
            env[env_name] = secret.get_secret_value()
            secrets.add(env_name)

    protected = {ENV_RUN_ID, ENV_EVENT_PREFIX, ENV_LOG_PATH, ENV_SCRIPT_URL, ENV_SCRIPT_SHA256}
    for key, value in (extra_env or {}).items():
        if key in FORBIDDEN_ENV:
            problems.append(
                f"{key} must not be set: the image would fetch its own script and boot on if that fails"
            )
        elif key in protected and env.get(key) != value:
            problems.append(f"{key} comes from the settings (one source of truth); do not override it")
        else:
            env[key] = value
            if key in SECRET_ENV:
                secrets.add(key)

    image = settings.docker_image
    entrypoint = VASTAI_ENTRYPOINT if image.startswith("vastai/") else None
    onstart = onstart_script(entrypoint=entrypoint)
    problems += vast_limit_problems(env, onstart, label=label, image=image)
    if problems:
        raise LaunchError(problems)
    return LaunchSpec(
        image=image, disk_gb=settings.disk_gb, runtype=DEFAULT_RUNTYPE, label=label, env=env,
        onstart=onstart, secret_env=frozenset(secrets),
    )
