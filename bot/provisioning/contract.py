"""The provisioning event contract, defined once and shared by the script and the watcher.

``deploy/provision.sh`` emits one line per step: ``EVENT_PREFIX`` followed by one compact JSON
object with the ``REQUIRED_FIELDS``. The watcher parses exactly this. The script receives the
prefix, run id and log path through the environment variables named here, so nothing is
hard-coded twice (a test fails if the script and this module drift).
"""

from __future__ import annotations

EVENT_PREFIX = "@@prov "
SCHEMA_VERSION = 1

# Default path of the provisioning log on the instance: the script writes here, the watcher
# reads here. Both take it from the PROVISION_LOG_PATH setting; this is only the default.
DEFAULT_LOG_PATH = "/workspace/vastops/provision.log"

# Environment variables the bot sets on the instance for the script.
ENV_RUN_ID = "PROV_RUN_ID"
ENV_EVENT_PREFIX = "PROV_EVENT_PREFIX"
ENV_LOG_PATH = "PROV_LOG_PATH"
ENV_SCRIPT_URL = "PROV_SCRIPT_URL"
ENV_SCRIPT_SHA256 = "PROV_SCRIPT_SHA256"
ENV_NODES = "PROV_NODES"  # whitespace-separated "url[@ref][!]" ("!" marks required)
ENV_MODELS = "PROV_MODELS"  # whitespace-separated "dir|url[|min_bytes[|size_bytes]]"
# A path or http(s) URL of a manifest ("node SPEC" / "model SPEC" / "apt PKG..." / "pip PKG..." lines),
# for lists too long for one Vast env value (each value must stay under 256 characters).
ENV_MANIFEST = "PROV_MANIFEST"
ENV_APT_PACKAGES = "PROV_APT_PACKAGES"
ENV_PIP_PACKAGES = "PROV_PIP_PACKAGES"
ENV_HEARTBEAT_S = "PROV_HEARTBEAT_S"  # heartbeat interval in seconds, 0 disables
ENV_ATTEMPT = "PROV_ATTEMPT"  # overrides the script's own per-run attempt counter
ENV_PYTHON = "PROV_PYTHON"  # the venv interpreter (default /venv/main/bin/python, else python3)
ENV_COMFYUI_DIR = "COMFYUI_DIR"
# Tokens go to the instance under these names and leave it only as "Authorization: Bearer" headers.
ENV_HF_TOKEN = "HF_TOKEN"
ENV_CIVITAI_TOKEN = "CIVITAI_TOKEN"

# ``att`` of the events the onstart bootstrap emits itself (``script_missing``), before any attempt.
BOOTSTRAP_ATTEMPT = 0

# Fields every event line carries.
REQUIRED_FIELDS = ("v", "run", "att", "seq", "ts", "ev", "st")

# Event ids the script may emit.
EVENTS = (
    "run.start",
    "env",
    "fetch",
    "apt",
    "pip",
    "torch",
    "node.clone",
    "node.reqs",
    "model.start",
    "model.progress",
    "model.done",
    "disk.check",
    "heartbeat",
    "run.done",
    "fallback",
    "script_missing",
)

STATUSES = ("start", "ok", "warn", "fail", "skip", "degraded")

# ``st`` of the final ``run.done`` event.
RUN_DONE_STATUSES = ("ok", "degraded", "fail")
