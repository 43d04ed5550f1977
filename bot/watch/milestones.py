"""Milestones from a provisioning log: our structured event lines and native lines alike.

Structured lines are ``EVENT_PREFIX`` + one JSON object carrying ``REQUIRED_FIELDS`` (the contract
in ``bot/provisioning/contract.py``). Native lines are the ones printed by the Vast provisioner,
ai-dock scripts, git, pip, ComfyUI and cloudflared (reference §1.3). Each milestone is reported
once, with the 1-based line number where it was seen.

Stage rules (documented because they are judgement calls):
* ``nodes_installed``: node activity (``node.clone``/``node.reqs`` events, or native
  ``Cloning into '.../custom_nodes/...'`` / ``Downloading node:`` / ``Git repo ready: .../custom_nodes``)
  opens the nodes stage; it is reported at the first line that shows the next stage began — a model
  download, a disk check, ``run.done`` ok/degraded, ``Provisioning complete`` or ComfyUI starting —
  or at a ``nodes.done`` event if a script emits one.
* ``models_downloaded``: reported when provisioning completes (``run.done`` ok/degraded or native
  ``Provisioning complete``) or ComfyUI starts, if at least one model finished
  (``model.done`` ok/skip, ``Successfully downloaded``, ``File already exists``); the line is the
  last finished model's.
* ``packages_installed``: the first ``apt``/``pip`` ok event or native success line.
* ``script_fetched``: ``fetch`` ok of the recipe/script/manifest, or native ``Script saved to ... (N bytes)``
  with a plausible size (a tiny file is GitHub's 404 body, which the classifier reports instead),
  or ai-dock's ``Successfully created .../provisioning.sh`` — which ai-dock prints even when
  ``curl -L -o`` (no ``-f``) saved a ``404: Not Found`` body, so it is only reported once a later
  line shows the script ran (any line other than ``dos2unix``/``Looking for provisioning.sh``); a
  ``line 1: 404...`` error from the script cancels it. The Vast/ai-dock scripts' own
  ``#  Provisioning container  #`` banner proves the script was fetched (legacy hooks print
  nothing else).
* ``models_downloaded`` counts as finished: the provisioner's ``Successfully downloaded``, wget's
  ``100%[====>]`` bar or ``‘…’ saved [N/N]``, aria2c's ``Download complete:`` or ``|OK  |`` result row,
  a tqdm bar at ``100%|…| N/N``, curl's final ``100  6616M  100  6616M`` meter line.
* ``torch_ready`` also from a script's probe: ``torch version: 2.5.1+cu124``,
  ``2.5.1+cu124 True`` (``print(torch.__version__, torch.cuda.is_available())``) — not a ``+cpu`` build.
* Custom nodes cloned relative to ``custom_nodes`` (``+ cd .../custom_nodes`` then
  ``Cloning into 'X'...``) count as node activity too.
* ``comfyui_ready`` from a log line is only a candidate: its detail carries ``needs_http_check: true``
  and the engine confirms it with ``GET /system_stats``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bot.provisioning.contract import EVENT_PREFIX, EVENTS, REQUIRED_FIELDS
from bot.watch.model import Milestone, MilestoneHit

_KNOWN_EVENTS = frozenset(EVENTS)
MIN_SCRIPT_BYTES = 20  # smaller "scripts" are error bodies (GitHub's "404: Not Found" is 14 bytes)


@dataclass(frozen=True, slots=True)
class ProvEvent:
    """One structured event line from our provisioning script."""

    v: int
    run: str
    att: int
    seq: int
    ts: str
    ev: str
    st: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def known(self) -> bool:
        return self.ev in _KNOWN_EVENTS

    @property
    def key(self) -> tuple[str, int, int]:
        """Identity across log snapshots and rotations: (run, attempt, seq)."""
        return (self.run, self.att, self.seq)

    def get(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)


def parse_event(line: str) -> ProvEvent | None:
    """Parse a structured event line; None for anything else (including malformed JSON)."""
    start = line.find(EVENT_PREFIX)
    if start < 0:
        return None
    # Tolerate a receipt timestamp or a tail separator in front of the prefix.
    payload = line[start + len(EVENT_PREFIX):].strip()
    if not payload.startswith("{"):
        return None
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(data, dict) or any(k not in data for k in REQUIRED_FIELDS):
        return None
    try:
        v, att, seq = int(data["v"]), int(data["att"]), int(data["seq"])
    except (TypeError, ValueError):
        return None
    ev, st = data["ev"], data["st"]
    if not isinstance(ev, str) or not isinstance(st, str):
        return None
    extra = {k: val for k, val in data.items() if k not in REQUIRED_FIELDS}
    return ProvEvent(v=v, run=str(data["run"]), att=att, seq=seq, ts=str(data["ts"]), ev=ev, st=st, extra=extra)


def strip_query(url: str) -> str:
    """scheme://host/path of a URL: query strings and fragments can carry tokens."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.split("?", 1)[0].split("#", 1)[0]
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


# -- native line patterns --------------------------------------------------------------------------

_URL = r"(https?://[^\s'\"<>|)]+)"
_PROV_STARTED = re.compile(
    r"\* Provisioning instance with (?:remote )?(?:script|manifest) from\s+" + _URL
    + r"|\bProvisioner starting\b|Looking for provisioning\.sh|\bProvisioning start:|^#\s+Provisioning container\s+#")
_SCRIPT_BANNER = re.compile(r"^#\s+Provisioning container\s+#")
_SCRIPT_BODY_404 = re.compile(r"provisioning\.sh: line 1: .*(?:404|Not Found|command not found|syntax error)")
_SCRIPT_SAVED = re.compile(r"Script saved to (\S+) \((\d+) bytes\)")
_SCRIPT_CREATED = re.compile(r"Successfully created (\S*provisioning\.sh) from\s+" + _URL)
_PACKAGES = re.compile(r"(?:Pip|APT) packages installed successfully|^\s*Successfully installed \S"
                       r"|^\s*Installed \d+ packages? in ")
_TORCH = re.compile(r"\b(?:py)?torch(?: version)?\s*[:=]\s*(\d+\.\d+\S*)|^(?:torch\s+)?(\d+\.\d+\.\d+\+cu\d+)"
                    r"(?:\s+|,\s*)(?:cuda(?: available)?\s*[:=]?\s*)?True\b", re.IGNORECASE)
_NODE_ACTIVITY = re.compile(r"Cloning into '[^']*/custom_nodes/([^'/]+)'|Downloading node: (\S+)|Updating node: (\S+)"
                            r"|Git repo ready: \S*/custom_nodes/(\S+)|Repo already exists: \S*/custom_nodes/(\S+)")
_MODEL_DONE = re.compile(r"Successfully downloaded:?\s*(\S+)?|File already exists: (\S+)")
# The other "a file finished" shapes, each behind its own substring gate (see ``_model_done``).
_DONE_100 = re.compile(r"\s100%\[=*>?\]|\b100%\|[^|]*\|\s*(?P<sz>[\d.]+\s?[kMGT]?i?B?)/(?P=sz)(?![\d.])")
_DONE_SAVED = re.compile(r"['‘]\S+['’] saved \[(?P<n>\d+)/(?P=n)\]")
_DONE_ARIA = re.compile(r"\w+\|OK\s*\|")
_DONE_CURL = re.compile(r"\s*100\s+[\d.]+[MGT]\s+100\s+[\d.]+[MGT]\s")


def _model_done(line: str, successfully: bool, download: bool) -> bool:
    """A line saying one model file finished downloading (or was already there).

    ``successfully`` / ``download``: whether ``"Successfully "`` / ``"ownload"`` occur in the line.
    """
    if (successfully and download) or "File already exists" in line:
        return _MODEL_DONE.search(line) is not None
    if download and "Download complete: " in line:
        return "[NOTICE]" in line
    if "saved [" in line:
        return _DONE_SAVED.search(line) is not None
    if "|OK" in line:
        return _DONE_ARIA.match(line) is not None
    if "100" not in line:
        return False
    if "100%" in line:
        return _DONE_100.search(line) is not None
    return line.lstrip()[:4] == "100 " and _DONE_CURL.match(line) is not None


_MODEL_STAGE = re.compile(r"Downloading \d+ model|^\s*Downloading: https?://"
                          r"|Downloading https?://\S+ \(attempt \d+/\d+\)|\[NOTICE\] Downloading \d+ item"
                          r"|(?:huggingface-cli|hf) download \S")
_CD_NODES = re.compile(r"^\+* ?cd \S*custom_nodes/?\s*$")
_CD_OTHER = re.compile(r"^\+* ?cd \S")
_RELATIVE_CLONE = re.compile(r"^Cloning into '([^'/]+)'")
_PROV_COMPLETE = re.compile(r"(?<!not yet )\bProvisioning (?:complete|completed|finished|done)\b", re.IGNORECASE)
_COMFY_STARTING = re.compile(r"Import times for custom nodes:|^\s*Starting server\s*$|To see the GUI go to:")
_COMFY_GUI = re.compile(r"To see the GUI go to: (https?)://(\S+?):(\d+)")
_TUNNEL_COMFY = re.compile(r"Default Tunnel started for ComfyUI \(([^)]*)\) - (https://\S+)")
_TUNNEL_PORTAL = re.compile(r"Default Tunnel started for Instance Portal \(([^)]*)\)(?: - (https://\S+))?")
_TRYCLOUDFLARE = re.compile(r"https://\w+(?:-\w+)+\.trycloudflare\.com")
_TUNNEL_TARGET = re.compile(r"\[(https?://[^\]\s]+)\]")
_NAMED_TUNNEL = re.compile(r"Cloudflare daemon started|Named tunnel process started")


# Enum attribute lookups cost several times a dict lookup; the per-line path uses these aliases.
_M_COMFYUI_READY = Milestone.COMFYUI_READY
_M_PACKAGES_INSTALLED = Milestone.PACKAGES_INSTALLED
_M_PORTAL_READY = Milestone.PORTAL_READY
_M_PROVISIONING_COMPLETE = Milestone.PROVISIONING_COMPLETE
_M_PROVISIONING_STARTED = Milestone.PROVISIONING_STARTED
_M_SCRIPT_FETCHED = Milestone.SCRIPT_FETCHED
_M_TORCH_READY = Milestone.TORCH_READY
_M_TUNNEL_READY = Milestone.TUNNEL_READY


class MilestoneParser:
    """Stateful milestone detection over one run's lines (events and native lines)."""

    def __init__(self) -> None:
        self.seen: dict[Milestone, MilestoneHit] = {}
        self._nodes_open = False
        self._nodes_count = 0
        self._nodes_failed = 0
        self._models_done = 0
        self._last_model_line: int | None = None
        self._pending_script: dict[str, Any] | None = None  # ai-dock's claim, until the script runs
        self._script_body_404 = False
        self._in_nodes_dir = False  # a traced ``cd`` into custom_nodes: relative clones are nodes

    def feed(self, line: str, lineno: int) -> list[MilestoneHit]:
        """Milestones first reached on this line (a structured event or a native line)."""
        event = parse_event(line)
        if event is not None:
            return self.feed_event(event, lineno)
        return self.feed_native(line, lineno)

    def reached(self, name: Milestone) -> bool:
        return name in self.seen

    # -- structured events ------------------------------------------------------------------------
    def feed_event(self, event: ProvEvent, lineno: int) -> list[MilestoneHit]:
        hits: list[MilestoneHit] = []
        ev, st = event.ev, event.st
        ok = st in ("ok", "skip")
        if ev == "run.start":
            self._hit(hits, Milestone.PROVISIONING_STARTED, lineno, run=event.run, att=event.att)
        elif ev == "fetch" and st == "ok" and _is_script_fetch(event):
            self._hit(hits, Milestone.SCRIPT_FETCHED, lineno, what=event.get("what"),
                      bytes=event.get("bytes"), path=event.get("path"))
        elif ev in ("apt", "pip") and st == "ok":
            self._hit(hits, Milestone.PACKAGES_INSTALLED, lineno, via=ev)
        elif ev == "torch" and st == "ok" and event.get("changed") is not True and event.get("available") is not False:
            self._hit(hits, Milestone.TORCH_READY, lineno, version=event.get("ver"), cuda=event.get("cuda"))
        elif ev in ("node.clone", "node.reqs"):
            if ev == "node.clone" and st in ("ok", "skip"):
                self._nodes_count += 1
            if st == "fail":
                self._nodes_failed += 1
            self._nodes_open = True
        elif ev == "nodes.done":
            self._close_nodes(hits, lineno)
        elif ev in ("model.start", "disk.check"):
            self._close_nodes(hits, lineno)
        elif ev == "model.done":
            self._close_nodes(hits, lineno)
            if ok:
                self._models_done += 1
                self._last_model_line = lineno
        elif ev == "run.done" and st in ("ok", "degraded"):
            self._close_nodes(hits, lineno)
            self._close_models(hits)
            self._hit(hits, Milestone.PROVISIONING_COMPLETE, lineno, st=st)
        return hits

    # -- native lines -----------------------------------------------------------------------------
    def feed_native(self, line: str, lineno: int) -> list[MilestoneHit]:
        hits: list[MilestoneHit] = []
        seen = self.seen
        # Each regex runs only when a word it needs is present: most lines pass the gate for one reason.
        # Checks that share a word are nested under it, so an ordinary line costs few substring tests.
        provision = "rovision" in line
        if provision and _M_PROVISIONING_STARTED not in seen and (m := _PROV_STARTED.search(line)):
            detail = {"url": strip_query(m.group(1))} if m.group(1) else {}
            self._hit(hits, _M_PROVISIONING_STARTED, lineno, **detail)
        successfully = "Successfully " in line
        if _M_SCRIPT_FETCHED not in seen and (
                self._pending_script is not None or provision or successfully or "Script saved" in line
                or "line 1:" in line):
            self._script_fetched(hits, line, lineno)
        if _M_PACKAGES_INSTALLED not in seen and "nstalled" in line and _PACKAGES.search(line):
            self._hit(hits, _M_PACKAGES_INSTALLED, lineno)
        if "cd " in line and line.startswith(("+", "cd ")) and _CD_OTHER.match(line):
            self._in_nodes_dir = _CD_NODES.match(line) is not None
        if ("custom_nodes" in line or "node: " in line) and _NODE_ACTIVITY.search(line):
            self._nodes_open = True
            if line.lstrip().startswith(("Cloning into", "Git repo ready", "Repo already exists")):
                self._nodes_count += 1
        elif self._in_nodes_dir and line.startswith("Cloning into") and _RELATIVE_CLONE.match(line):
            self._nodes_open = True
            self._nodes_count += 1
        download = "ownload" in line
        if _model_done(line, successfully, download):
            self._close_nodes(hits, lineno)
            self._models_done += 1
            self._last_model_line = lineno
        elif download and "Downloading" in line and _MODEL_STAGE.search(line):
            self._close_nodes(hits, lineno)
        if ("omplete" in line or "OMPLETE" in line) and _PROV_COMPLETE.search(line):
            self._close_nodes(hits, lineno)
            self._close_models(hits)
            self._hit(hits, _M_PROVISIONING_COMPLETE, lineno)
        gui = "To see the GUI" in line
        if (gui or "Import times" in line or "Starting server" in line) and _COMFY_STARTING.search(line):
            self._close_nodes(hits, lineno)
            self._close_models(hits)
        if (_M_TORCH_READY not in seen and ("orch" in line or line[:1].isdigit())
                and (m := _TORCH.search(line)) and "+cpu" not in (version := m.group(1) or m.group(2))):
            self._hit(hits, _M_TORCH_READY, lineno, version=version)
        if gui and _M_COMFYUI_READY not in seen and (m := _COMFY_GUI.search(line)):
            scheme, host, port = m.groups()
            self._hit(hits, _M_COMFYUI_READY, lineno, url=f"{scheme}://{host}:{port}", port=int(port),
                      needs_http_check=True)
        if ((_M_TUNNEL_READY not in seen or _M_PORTAL_READY not in seen)
                and ("unnel" in line or "trycloudflare" in line or "Cloudflare daemon" in line)):
            self._tunnels(hits, line, lineno)
        return hits

    def _script_fetched(self, hits: list[MilestoneHit], line: str, lineno: int) -> None:
        if "Script saved" in line and (m := _SCRIPT_SAVED.search(line)):
            if int(m.group(2)) >= MIN_SCRIPT_BYTES:
                self._hit(hits, Milestone.SCRIPT_FETCHED, lineno, path=m.group(1), bytes=int(m.group(2)))
            return
        if "Successfully created" in line and (m := _SCRIPT_CREATED.search(line)):
            self._pending_script = {"line": lineno, "path": m.group(1), "url": strip_query(m.group(2))}
            return
        if "line 1:" in line and _SCRIPT_BODY_404.search(line):
            self._pending_script = None  # the "script" was an error page
            self._script_body_404 = True
            return
        if self._pending_script is not None:
            stripped = line.strip()
            if not stripped or stripped.startswith("dos2unix") or "Looking for provisioning.sh" in stripped:
                return
            pending, self._pending_script = self._pending_script, None
            self._hit(hits, Milestone.SCRIPT_FETCHED, pending.pop("line"), **pending)
            return
        if not self._script_body_404 and "Provisioning container" in line and _SCRIPT_BANNER.search(line):
            self._hit(hits, Milestone.SCRIPT_FETCHED, lineno)

    def _tunnels(self, hits: list[MilestoneHit], line: str, lineno: int) -> None:
        if m := _TUNNEL_COMFY.search(line):
            self._hit(hits, Milestone.TUNNEL_READY, lineno, url=strip_query(m.group(2)), target=m.group(1))
            return
        if m := _TUNNEL_PORTAL.search(line):
            detail = {"url": strip_query(m.group(2))} if m.group(2) else {}
            self._hit(hits, Milestone.PORTAL_READY, lineno, target=m.group(1), **detail)
            return
        if "Default Tunnel started for " in line:
            return  # a tunnel for some other portal app
        if m := _TRYCLOUDFLARE.search(line):
            # cloudflared's own box line; the tunnel manager prefixes it with the tunnel's target.
            found = _TUNNEL_TARGET.search(line)
            target = found.group(1) if found else None
            port = target.rstrip("/").rsplit(":", 1)[-1] if target else None
            if port in ("1111", "11111"):
                self._hit(hits, Milestone.PORTAL_READY, lineno, url=m.group(0), target=target)
            elif port is None or port in ("8188", "18188"):
                self._hit(hits, Milestone.TUNNEL_READY, lineno, url=m.group(0), target=target)
            return
        if _NAMED_TUNNEL.search(line):
            self._hit(hits, Milestone.TUNNEL_READY, lineno, named=True)

    # -- helpers ----------------------------------------------------------------------------------
    def _hit(self, hits: list[MilestoneHit], name: Milestone, lineno: int | None, **detail: Any) -> None:
        if name in self.seen:
            return
        hit = MilestoneHit(name, lineno, {k: v for k, v in detail.items() if v is not None})
        self.seen[name] = hit
        hits.append(hit)

    def _close_nodes(self, hits: list[MilestoneHit], lineno: int) -> None:
        if not self._nodes_open:
            return
        self._nodes_open = False
        self._hit(hits, Milestone.NODES_INSTALLED, lineno, nodes=self._nodes_count or None,
                  failed=self._nodes_failed or None)

    def _close_models(self, hits: list[MilestoneHit]) -> None:
        if self._models_done:
            self._hit(hits, Milestone.MODELS_DOWNLOADED, self._last_model_line, models=self._models_done)


def _is_script_fetch(event: ProvEvent) -> bool:
    what = event.get("what")
    if what is not None and str(what).lower() not in ("recipe", "script", "manifest", "bootstrap", "provisioning"):
        return False
    http = event.get("http")
    size = event.get("bytes")
    if isinstance(http, int) and http >= 400:
        return False
    return not (isinstance(size, int) and size < MIN_SCRIPT_BYTES)
