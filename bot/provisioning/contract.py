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
ENV_MODELS = "PROV_MODELS"  # whitespace-separated "dir|url[|min_bytes]"

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
