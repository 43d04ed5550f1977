"""The rehearsal stage: the Vast simulator plus, per rented instance, a real SSH server over a
temporary root, a fake ComfyUI reachable through it, and a scenario writing logs on simulated time.

``RehearsalStage`` is the world; ``play()`` runs one scenario through the same rental service,
watch engine and store as the Discord bot (request → approve → ticks → teardown) and returns a
``RunResult`` that the demo prints, the tests assert and the benchmark measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import string
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from bot.clock import Clock, FakeClock
from bot.db.models import Event, Rental, RentalState
from bot.provisioning.contract import EVENT_PREFIX, SCHEMA_VERSION
from bot.settings import Settings
from bot.sim.api import VastSim
from bot.sim.catalog import china_cheapest_catalogue, default_catalogue
from bot.sim.hub import hub_from_toml
from bot.sim.scenarios import Scenario, Step
from bot.sim.sshd import SimSshServer, make_client_key

log = logging.getLogger(__name__)

SIM_API_KEY = "sim-key-not-secret"
COMFYUI_INTERNAL_PORT = 18188  # where ComfyUI itself listens inside a Vast instance
CADDY_PORT = 8188  # Caddy in front of it: a placeholder page until ComfyUI is up
# The sim's states before "running": provisioning (2 s) and created (5 s); then loading.
_SIM_PRE_LOADING = 7.0
SEVERITY_RANK = {"info": 0, "warn": 1, "error": 2, "fatal": 3}

# What a vastai/comfyui image writes at boot, before any provisioning: its services' logs (the
# portal copies keep colour; the engine's log discovery sees these next to any provisioning log).
IMAGE_LOGS: dict[str, str] = {
    "/var/log/portal/caddy.log": '{"level":"info","logger":"http","msg":"serving initial configuration"}\n',
    "/var/log/portal/instance_portal.log": "INFO:     Uvicorn running on http://127.0.0.1:11111\n",
    "/var/log/portal/tunnel_manager.log": "Tunnel manager started; waiting for /etc/portal.yaml\n",
    "/var/log/caddy.log": '{"level":"info","logger":"http","msg":"serving initial configuration"}\n',
    "/var/log/instance_portal.log": "INFO:     Uvicorn running on http://127.0.0.1:11111\n",
    "/var/log/supervisor/supervisord.log": "INFO supervisord started with pid 1\n",
}

CATALOGUES: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "default": default_catalogue,
    "china-cheapest": china_cheapest_catalogue,
}

SYSTEM_STATS: dict[str, Any] = {
    "system": {"os": "posix", "ram_total": 67_430_000_000, "ram_free": 60_120_000_000,
               "comfyui_version": "0.3.64", "python_version": "3.12.3", "pytorch_version": "2.8.0+cu128",
               "embedded_python": False, "argv": ["main.py", "--port", "18188"]},
    "devices": [{"name": "cuda:0 NVIDIA GeForce RTX 3090 : cudaMallocAsync", "type": "cuda", "index": 0,
                 "vram_total": 25_393_692_672, "vram_free": 24_777_457_664}],
}


class StageSettings(Settings):
    """Settings for a rehearsal: only what the stage passes in, never the operator's env or .env."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


# ---------------------------------------------------------------------------- fake hosts


class FakeComfyUI:
    """ComfyUI's HTTP API on loopback: Caddy's placeholder (502, ``X-Portal-Placeholder``) until up."""

    def __init__(self) -> None:
        self.up = False
        self.port = 0
        self.hits = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/system_stats", self._stats)
        app.router.add_get("/api/system_stats", self._stats)
        app.router.add_get("/queue", self._queue)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _placeholder(self) -> web.Response:
        return web.Response(status=502, text="<html><body>Loading ComfyUI...</body></html>",
                            content_type="text/html", headers={"X-Portal-Placeholder": "true"})

    async def _stats(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.json_response(SYSTEM_STATS) if self.up else self._placeholder()

    async def _queue(self, request: web.Request) -> web.Response:
        if not self.up:
            return self._placeholder()
        return web.json_response({"queue_running": [], "queue_pending": []})


class FakeGistHost:
    """The script URL's host on loopback: serves the scenario's script path with its status code."""

    def __init__(self, scenario: Scenario, body: bytes) -> None:
        self.scenario = scenario
        self.body = body
        self.port = 0
        self.hits: list[str] = []
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> int:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._serve)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _serve(self, request: web.Request) -> web.Response:
        self.hits.append(request.path)
        if request.path.startswith("/gists/"):
            return self._gist_api(request.path.removeprefix("/gists/").strip("/"))
        # GitHub's raw host answers a missing file or revision with a 14-byte text body.
        if request.path != self.scenario.script_path or self.scenario.script_status != 200:
            status = self.scenario.script_status if request.path == self.scenario.script_path else 404
            return web.Response(status=status, text="404: Not Found")
        return web.Response(body=self.body if request.method != "HEAD" else None,
                            content_type="text/plain", headers={"Content-Length": str(len(self.body))})


    def _gist_api(self, gist_id: str) -> web.Response:
        # GitHub's gist API: the files the gist holds and its revision history (newest first).
        parts = self.scenario.script_path.strip("/").split("/")
        if len(parts) < 2 or parts[1] != gist_id:
            return web.json_response({"message": "Not Found"}, status=404)
        files = {name: {"filename": name, "raw_url": f"{self.base_url}/{parts[0]}/{gist_id}/raw/{name}"}
                 for name in self.scenario.gist_files}
        history = [{"version": "c0ffee" + "0" * 34}, {"version": "b4dcafe" + "0" * 33}]
        return web.json_response({"id": gist_id, "files": files, "history": history})


def _script_body() -> bytes:
    # Serve our real script when the checkout has it, so a preflight sees what an instance would.
    path = Path(__file__).resolve().parents[2] / "deploy" / "provision.sh"
    if path.is_file():
        return path.read_bytes()
    return b"#!/usr/bin/env bash\nset -Eeuo pipefail\necho 'vastops provision stand-in'\n"


# ---------------------------------------------------------------------------- instances


@dataclass
class SimInstance:
    """One simulated instance on the stage."""

    id: int
    label: str
    created_at: float
    root: Path
    sshd: SimSshServer
    comfy: FakeComfyUI
    script_log: str
    container_lines: list[str] = field(default_factory=list)
    seq: int = 0
    task: asyncio.Task[None] | None = None
    comfyui_up_at: float | None = None
    written: list[tuple[float, str, str]] = field(default_factory=list)  # (t since create, target, line)

    def local(self, remote: str) -> Path:
        return self.sshd.local_path(remote)

    def container_log(self) -> str:
        return "\n".join(self.container_lines[-2000:]) + ("\n" if self.container_lines else "")


class RehearsalStage:
    """The simulated world of one scenario: Vast API, gist host, and per-instance SSH + ComfyUI.

    ``await stage.start()`` starts the servers and writes a client key; ``stage.settings`` is
    what the bot runs with (simulator backend, the stage's key, the scenario's overrides).
    Each instance the bot creates gets its own temporary root with ``/workspace`` and
    ``/var/log``; ``stop()`` stops everything and removes the temporary directory.
    """

    def __init__(self, scenario: Scenario, clock: Clock, *, workdir: Path | None = None,
                 logs_delay: float = 2.0) -> None:
        self.scenario = scenario
        self.clock = clock
        self._own_dir = workdir is None
        self.dir = workdir or Path(tempfile.mkdtemp(prefix=f"vastops-{scenario.name}-"))
        self.key_path = self.dir / "keys" / "id_ed25519"
        self.instances: dict[int, SimInstance] = {}
        catalogue = CATALOGUES.get(scenario.catalogue)
        if catalogue is None:
            raise ValueError(f"scenario {scenario.name}: unknown catalogue {scenario.catalogue!r}")
        self.sim = VastSim(
            clock, catalogue=catalogue(), api_key=SIM_API_KEY,
            loading_to_running=max(0.0, scenario.running_at - _SIM_PRE_LOADING), logs_delay=logs_delay,
        )
        self.sim.on_create = self._on_create
        body = scenario.script_body.encode() if scenario.script_body is not None else _script_body()
        self.gist = FakeGistHost(scenario, body)
        # The model and git hosts the scenario's manifest names, on loopback (bot/sim/hub.py).
        self.hub = hub_from_toml(scenario.preflight) if scenario.preflight else None
        self.settings: Settings | None = None
        self._started = False

    async def start(self, **setting_overrides: Any) -> Settings:
        make_client_key(self.key_path)
        await self.sim.start()
        await self.gist.start()
        if self.hub is not None:
            await self.hub.start()
        self._started = True
        values: dict[str, Any] = {
            "vast_backend": "sim",
            "vast_api_key": SIM_API_KEY,
            "vast_api_url": self.sim.base_url,
            "database_path": self.dir / "vastops.db",
            "ssh_key_path": self.key_path,
            "provision_script_url": self.gist.base_url + self.scenario.script_path,
            "teardown_policy": "destroy",
            "poll_interval": 15.0,
        }
        values.update(self.scenario.settings)
        values.update(setting_overrides)
        self.settings = StageSettings(**values)
        return self.settings

    def bot_settings(self, settings: Settings) -> Settings:
        """The operator's ``settings`` pointed at this stage (for ``VAST_BACKEND=sim python -m bot run``):
        the simulator's key, the stage's SSH key and script URL, and the scenario's overrides; the
        Discord ids, teardown policy and timings stay the operator's."""
        assert self.settings is not None, "start() the stage first"
        update: dict[str, Any] = {
            "vast_backend": "sim", "vast_api_key": self.settings.vast_api_key,
            "ssh_key_path": self.key_path, "provision_script_url": self.settings.provision_script_url,
            **self.scenario.settings,
        }
        for key in ("hf_token", "civitai_token"):  # model_copy does not validate: keep secrets SecretStr
            if isinstance(update.get(key), str):
                update[key] = SecretStr(update[key])
        if self.hub is not None:
            # The bot's own preflight knows nothing of the stage: point the manifest at the loopback hosts.
            for key in ("provision_models", "provision_nodes", "provision_manifest"):
                if isinstance(update.get(key), str):
                    for origin, base in self.hub.url_map.items():
                        update[key] = update[key].replace(origin + "/", base + "/")
        return settings.model_copy(update=update)

    async def stop(self) -> None:
        for inst in self.instances.values():
            await self._stop_instance(inst)
        if self._started:
            await self.sim.stop()
            await self.gist.stop()
            if self.hub is not None:
                await self.hub.stop()
            self._started = False
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    async def __aenter__(self) -> RehearsalStage:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- instances ----------------------------------------------------------------------------

    @property
    def configured_log(self) -> str:
        assert self.settings is not None, "start() the stage first"
        return self.settings.provision_log_path

    async def _on_create(self, row: dict[str, Any]) -> None:
        instance_id = int(row["id"])
        root = self.dir / "instances" / str(instance_id)
        for sub in ("workspace", "var/log/portal", "root", "tmp"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        comfy = FakeComfyUI()
        await comfy.start()
        sshd = SimSshServer(
            root, authorized_key=Path(str(self.key_path) + ".pub"), clock=self.clock,
            boot_delay=self.scenario.ssh_at, refuse_forever=self.scenario.ssh_never,
            comfyui_port_map={CADDY_PORT: comfy.port},
        )
        port = await sshd.start()
        inst = SimInstance(
            id=instance_id, label=str(row.get("label") or ""), created_at=self.clock.now(), root=root,
            sshd=sshd, comfy=comfy, script_log=self.scenario.script_log or self.configured_log,
        )
        self.instances[instance_id] = inst
        binding = [{"HostIp": "127.0.0.1", "HostPort": str(port)}]
        self.sim.update_instance(instance_id, public_ipaddr="127.0.0.1", ssh_host="127.0.0.1", ssh_port=port,
                                 ports={"22/tcp": binding})
        self.sim.set_container_logs(instance_id, inst.container_log)
        inst.task = asyncio.create_task(self._timeline(inst), name=f"stage-timeline-{instance_id}")

    async def _stop_instance(self, inst: SimInstance) -> None:
        if inst.task is not None:
            inst.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await inst.task
            inst.task = None
        await inst.sshd.stop()
        await inst.comfy.stop()

    def _alive(self, inst: SimInstance) -> bool:
        return self.sim.row(inst.id) is not None

    def _image_boot(self, inst: SimInstance) -> None:
        for remote, text in IMAGE_LOGS.items():
            path = inst.local(remote)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as fh:
                fh.write(text)

    async def _timeline(self, inst: SimInstance) -> None:
        boot: list[tuple[float, Step | None]] = []
        if self.scenario.image_logs:
            boot.append((self.scenario.running_at, None))
        try:
            for at, step in sorted([*boot, *expand_steps(self.scenario.steps)], key=lambda p: p[0]):
                while (left := inst.created_at + at - self.clock.now()) > 0:
                    await self.clock.sleep(left)
                if not self._alive(inst):
                    break  # destroyed: a gone container writes nothing more
                if step is None:
                    self._image_boot(inst)
                else:
                    self.perform(inst, step, at)
            while self._alive(inst):
                await self.clock.sleep(60.0)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("scenario timeline of instance %s failed", inst.id)
        finally:
            if not self._alive(inst):
                await inst.sshd.stop()

    def perform(self, inst: SimInstance, step: Step, at: float) -> None:
        """Do one step now: print its output, switch ComfyUI."""
        if step.comfyui == "up":
            inst.comfy.up = True
            inst.sshd.port_map[COMFYUI_INTERNAL_PORT] = inst.comfy.port
            inst.comfyui_up_at = at
        elif step.comfyui == "down":
            inst.comfy.up = False
            inst.sshd.port_map.pop(COMFYUI_INTERNAL_PORT, None)
        if not step.out:
            return
        lines = [self.render(inst, item.line, item.event) for item in step.out]
        if step.target in ("both", "log"):
            path = inst.local(self.substitute(inst, step.path) if step.path else inst.script_log)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as fh:
                fh.write("".join(f"{line}\n" for line in lines))
        if step.target in ("both", "container"):
            inst.container_lines.extend(lines)
        inst.written.extend((at, step.target, line) for line in lines)

    def variables(self, inst: SimInstance) -> dict[str, str]:
        assert self.settings is not None
        return {"log": self.configured_log, "script_log": inst.script_log, "run": inst.label,
                "script_url": self.settings.provision_script_url or "", "instance": str(inst.id)}

    def substitute(self, inst: SimInstance, text: str) -> str:
        return string.Template(text).safe_substitute(self.variables(inst))

    def render(self, inst: SimInstance, line: str | None, event: dict[str, Any] | None) -> str:
        """A native line (with ``${var}`` substituted) or one of our event lines, numbered."""
        if event is None:
            return self.substitute(inst, line or "")
        inst.seq += 1
        ts = datetime.fromtimestamp(self.clock.now(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body: dict[str, Any] = {"v": SCHEMA_VERSION, "run": inst.label, "att": 1, "seq": inst.seq, "ts": ts}
        for key, value in event.items():
            body[key] = self.substitute(inst, value) if isinstance(value, str) else value
        return EVENT_PREFIX + json.dumps(body, separators=(",", ":"))


@asynccontextmanager
async def sim_backend(settings: Settings, clock: Clock, *, scenario: str = "happy",
                      ) -> AsyncIterator[tuple[Settings, Any]]:
    """The rehearsal stage behind the real bot: yields ``(settings, vast_client)``.

    For ``VAST_BACKEND=sim python -m bot run``: every instance the bot rents gets its own SSH
    server and fake ComfyUI and plays ``scenario`` in real time (``happy`` takes ~4 minutes),
    so a team can rehearse approvals, watching and teardown in their own Discord server without
    spending. Use the yielded settings (they carry the stage's SSH key) to build the bot.
    """
    from bot.sim.scenarios import load_scenario
    from bot.vast.client import VastClient

    stage = RehearsalStage(load_scenario(scenario), clock)
    await stage.start()
    try:
        async with VastClient(stage.sim.base_url or "", SIM_API_KEY, clock=clock) as vast:
            yield stage.bot_settings(settings), vast
    finally:
        await stage.stop()


def expand_steps(steps: tuple[Step, ...]) -> list[tuple[float, Step]]:
    """Every (time, step) occurrence, repeats unrolled, in time order (stable for equal times)."""
    out: list[tuple[float, Step]] = []
    for step in steps:
        if step.every:
            t, end = step.at, step.until if step.until is not None else step.at
            while t <= end + 1e-9:
                out.append((t, step))
                t += step.every
        else:
            out.append((step.at, step))
    return sorted(out, key=lambda pair: pair[0])


# ---------------------------------------------------------------------------- one run


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
    spent: float = 0.0  # billed by the simulator until spending stopped (or until ready)
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
        return self.baseline_usd / self.spent if self.spent > 0 else None

    @property
    def signal_to_decision(self) -> float | None:
        if self.decision_at is None or self.scenario.expect.signal_at is None:
            return None
        return self.decision_at - self.scenario.expect.signal_at

    def mismatches(self, *, tolerance: float | None = None) -> list[str]:
        """How this run differs from the scenario's expectation (empty when it matches).

        ``tolerance``: how late after the signal the decision may come (default: one poll).
        """
        exp = self.scenario.expect
        late_ok = self.poll_interval if tolerance is None else tolerance
        out: list[str] = []
        if self.scenario.preflight_blocks:
            return self._preflight_mismatches()
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
                out.append(f"teardown at {self.decision_at:.0f}s, {delta:.0f}s after the signal "
                           f"(allowed {late_ok:.0f}s)")
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
                key = (str(f.get("category")), str(f.get("text")))
                if key in seen:
                    out.append(f"finding posted twice: {key[0]}: {key[1][:80]}")
                    break
                seen.add(key)
        if exp.country_not_in and (self.country is None or self.country in exp.country_not_in):
            out.append(f"rented a host in {self.country or 'an unknown country'} ({self.geolocation})")
        return out


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


class _Notifier:
    """Fans engine events out to the caller's notifier (if any) and keeps them in order."""

    def __init__(self, forward: Any | None) -> None:
        self.forward = forward
        self.events: list[Event] = []

    async def notify(self, rental: Rental, event: Event) -> None:
        if self.forward is not None:
            await self.forward.notify(rental, event)
        self.events.append(event)


class ClockDriver:
    """How a run moves time: a FakeClock is advanced (instant, exact), any other clock is slept on."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    async def wait(self, seconds: float) -> None:
        if isinstance(self.clock, FakeClock):
            await self.clock.advance(seconds, step=1.0)
        else:
            await self.clock.sleep(seconds)


async def play(
    scenario: Scenario,
    clock: Clock,
    *,
    notifier: Any | None = None,
    workdir: Path | None = None,
    fast_api: bool | None = None,
    on_stage: Callable[[RehearsalStage], Awaitable[None]] | None = None,
    setting_overrides: dict[str, Any] | None = None,
) -> RunResult:
    """Play ``scenario`` end to end through the real rental service, watch engine and store.

    A fake approver approves the best offer; the engine is ticked every poll interval until the
    rental is destroyed, or has been ready for ``run_for`` seconds, or a safety limit passes. A
    rental still alive at the end is destroyed ("rehearsal over") so nothing is left behind.
    ``fast_api`` (default: with a FakeClock) removes the client's request spacing and the
    simulator's log-upload delay, so no API call sleeps on a clock nobody advances.
    """
    from bot.db.store import Store
    from bot.rentals import RentalService
    from bot.vast.client import DEFAULT_MIN_SPACING, NO_SPACING, VastClient
    from bot.watch.engine import WatchEngine, WatchPolicy
    from bot.watch.redact import Redactor

    fast = isinstance(clock, FakeClock) if fast_api is None else fast_api
    wall0 = time.monotonic()
    stage = RehearsalStage(scenario, clock, workdir=workdir, logs_delay=0.0 if fast else 2.0)
    result = RunResult(scenario, poll_interval=15.0, workdir=stage.dir)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(stage.stop)
        settings = await stage.start(**(setting_overrides or {}))
        result.poll_interval = settings.poll_interval
        store = await Store.open(settings.database_path)
        stack.push_async_callback(store.close)
        vast = VastClient(stage.sim.base_url or "", SIM_API_KEY, clock=clock,
                          min_spacing=NO_SPACING if fast else dict(DEFAULT_MIN_SPACING))
        stack.push_async_callback(vast.aclose)
        engine = WatchEngine(store=store, vast=vast, clock=clock, policy=WatchPolicy.from_settings(settings),
                             redactor=Redactor(settings.secret_values()), notifier=_Notifier(notifier))
        stack.push_async_callback(engine.stop)
        if on_stage is not None:
            await on_stage(stage)

        def service(preflight: Any) -> RentalService:
            return RentalService(store=store, vast=vast, clock=clock, settings=settings, engine=engine,
                                 preflight=preflight)

        rental = await _rent(service, stage, result)
        if rental is not None:
            result.rental = rental
            await _drive(engine, store, stage, ClockDriver(clock), result)
            await _finish(engine, store, stage, result)
    result.wall_seconds = time.monotonic() - wall0
    return result


def _preflight_for(stage: RehearsalStage, result: RunResult) -> Any:
    """The real preflight, aimed at the stage's gist host, keeping its report for the summary."""
    try:
        from bot.provisioning.preflight import preflight
    except ImportError:
        return None

    url_map = stage.hub.url_map if stage.hub is not None else None

    async def run(settings: Settings, **for_offer: Any) -> Any:
        report = await preflight(settings, gist_api_base=stage.gist.base_url, url_map=url_map, **for_offer)
        result.preflight, result.preflight_blocked = report, not report.ok
        return report

    return run


async def _rent(service: Callable[[Any], Any], stage: RehearsalStage, result: RunResult) -> Rental | None:
    """Search, request the best offer, approve it as a fake approver; None if nothing was rented.

    The approval runs the real preflight, as the Discord bot's does. When the preflight blocks
    (the scenario's script URL is broken), that is recorded and the same request is approved
    once more without it, to rehearse what the instance-side defences do.
    """
    from bot.rentals import DecisionResult
    from bot.vast.models import OfferQuery

    scenario = stage.scenario
    checked = service(_preflight_for(stage, result))
    offers = await checked.search(checked.query())
    if scenario.baseline.price == "audit_pick":
        audit_query = OfferQuery(**{**checked.query().model_dump(),
                                    "excluded_countries": list(scenario.baseline.audit_excluded_countries)})
        picks = await checked.vast.search_offers(audit_query)
        result.audit_pick = picks[0].model_dump() if picks else None
    if not offers:
        result.notes.append("no offer matched the filters; nothing was rented")
        return None
    offer = offers[0]
    result.country, result.geolocation, result.dph = offer.country, offer.geolocation, offer.dph_total
    if result.audit_pick is not None and result.audit_pick.get("id") != offer.id:
        result.notes.append(
            f"the audit's filter (excluding {','.join(scenario.baseline.audit_excluded_countries)}) rents "
            f"offer {result.audit_pick.get('id')} in {result.audit_pick.get('geolocation')!r} at "
            f"${float(result.audit_pick.get('dph_total') or 0):.3f}/h; the bot rented {offer.id} in "
            f"{offer.geolocation!r} at ${offer.dph_total:.3f}/h")
    rental, approval = await checked.request(offer, requester_id=1001, requester_name="demo-user")
    decision = await checked.decide(approval.id, approve=True, user_id=2002, user_name="demo-approver",
                                    is_approver=True)
    if decision.result == DecisionResult.PREFLIGHT_FAILED:
        result.preflight_message = decision.message
        if scenario.preflight_blocks:  # the catch under rehearsal: nothing is rented, nothing spent
            result.notes.append("the preflight refused the rent; nothing was rented")
            return None
        decision = await service(None).decide(approval.id, approve=True, user_id=2002,
                                              user_name="demo-approver", is_approver=True)
    if decision.rental is None or decision.rental.instance_id is None:
        result.notes.append(f"approval did not rent: {decision.result.value}: {decision.message}")
        return None
    rental = decision.rental
    result.instance_id = rental.instance_id
    return rental


def _since(rental: Rental, ts: float) -> float:
    return ts - (rental.started_at or rental.created_at)


async def _drive(engine: Any, store: Any, stage: RehearsalStage, driver: ClockDriver,
                 result: RunResult) -> None:
    scenario = stage.scenario
    assert result.rental is not None
    rental_id = result.rental.id
    poll = result.poll_interval
    start = result.rental.started_at or stage.clock.now()
    ssh_at = 0.0 if scenario.ssh_never else scenario.ssh_at
    horizon = max(scenario.end_of_script, scenario.expect.signal_at or 0.0, ssh_at) + 8 * poll
    settings = stage.settings
    if settings is not None and settings.teardown_policy == "propose":
        horizon += settings.proposal_timeout  # a proposal nobody answers is carried out at expiry
    ready_for = scenario.run_for if scenario.run_for is not None else 2 * poll
    ready_since: float | None = None
    while True:
        await engine.tick()
        rental = await store.get_rental(rental_id)
        now = stage.clock.now()
        if rental is None or rental.state == RentalState.DESTROYED:
            break
        if rental.state in (RentalState.READY, RentalState.DEGRADED):
            ready_since = now if ready_since is None else ready_since
            if now - ready_since >= ready_for:
                break
        if now - start >= horizon:
            result.notes.append(f"stopped watching at the safety horizon ({horizon:.0f}s)")
            break
        # As the bot's engine loop does: the next poll starts one interval after this one ended.
        await driver.wait(poll)


async def _finish(engine: Any, store: Any, stage: RehearsalStage, result: RunResult) -> None:
    assert result.rental is not None
    rental = await store.get_rental(result.rental.id) or result.rental
    events = await store.events_for(rental.id)
    result.events = list(events)
    for ev in events:
        t = _since(rental, ev.ts)
        if ev.kind == "finding":
            result.findings.append(ev.payload)
            if ev.payload.get("stops_run") and result.conclusive is None:
                result.conclusive = ev.payload
                result.knew_at = t if result.knew_at is None else result.knew_at
        elif ev.kind == "milestone" and ev.payload.get("name") == "comfyui_ready" and result.knew_at is None:
            result.knew_at = t
        elif ev.kind == "decision" and result.decision_at is None:
            result.decision_at = t
            evidence = ev.payload.get("evidence") or {}
            result.category = evidence.get("category") or ev.payload.get("reason")
        elif ev.kind == "verdict":
            result.verdict = str(ev.payload.get("verdict"))
            cause = ev.payload.get("cause") or {}
            if result.decision_at is None and cause:
                result.category = cause.get("category")
        elif ev.kind == "receipt" and result.stopped_at is None:
            result.stopped_at = t
    instance_id = rental.instance_id
    if instance_id is not None:
        if result.stopped_at is not None:
            result.spent = stage.sim.cost_of(instance_id, at=(rental.started_at or 0.0) + result.stopped_at)
        elif result.knew_at is not None:
            result.spent = stage.sim.cost_of(instance_id, at=(rental.started_at or 0.0) + result.knew_at)
        else:
            result.spent = stage.sim.cost_of(instance_id)
    if rental.state != RentalState.DESTROYED:
        # A good rental is the user's to keep; a rehearsal cleans up after itself.
        await engine.destroy(rental.id, reason="rehearsal over", by="demo")
    if instance_id is not None:
        result.billed_total = stage.sim.cost_of(instance_id)
        later = stage.sim.cost_of(instance_id, at=stage.clock.now() + 3600.0)
        result.billing_stopped = later - result.billed_total < 1e-9
    calls: dict[str, int] = {}
    for req in stage.sim.requests:
        calls[req.endpoint] = calls.get(req.endpoint, 0) + 1
    result.sim_calls = calls
    result.rental = await store.get_rental(rental.id) or rental
