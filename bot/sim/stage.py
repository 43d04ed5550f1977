"""The rehearsal stage: the Vast simulator plus, per rented instance, a real SSH server over a
temporary root, a fake ComfyUI reachable through it, and a scenario writing logs on simulated time.

``RehearsalStage`` is the world a scenario plays in; it runs nothing of the bot. The rehearsal
driver (``bot.rehearsal``) puts the real rental service and watch engine in front of it, and
``sim_backend`` puts the whole Discord bot in front of it (``VAST_BACKEND=sim``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import string
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from bot.clock import Clock
from bot.provisioning.contract import EVENT_PREFIX, SCHEMA_VERSION
from bot.settings import Settings
from bot.sim.api import VastSim
from bot.sim.catalog import china_cheapest_catalogue, default_catalogue
from bot.sim.hosts import FakeComfyUI, FakeGistHost, script_body
from bot.sim.hub import hub_from_toml
from bot.sim.scenarios import Scenario, Step
from bot.sim.sshd import SimSshServer, make_client_key

log = logging.getLogger(__name__)

SIM_API_KEY = "sim-key-not-secret"
COMFYUI_INTERNAL_PORT = 18188  # where ComfyUI itself listens inside a Vast instance
CADDY_PORT = 8188  # Caddy in front of it: a placeholder page until ComfyUI is up
# The sim's states before "running": provisioning (2 s) and created (5 s); then loading.
_SIM_PRE_LOADING = 7.0
# A rehearsal destroys at once (a scenario may override it): spending stops at the decision.
REHEARSAL_TEARDOWN_POLICY = "destroy"

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
        body = scenario.script_body.encode() if scenario.script_body is not None else script_body()
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
            "teardown_policy": REHEARSAL_TEARDOWN_POLICY,
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
    from bot.settings import ConfigError
    from bot.sim.scenarios import ScenarioError, load_scenario
    from bot.vast.client import VastClient

    try:
        played = load_scenario(scenario)
    except ScenarioError as exc:
        raise ConfigError([f"SIM_SCENARIO: {exc}"]) from None
    stage = RehearsalStage(played, clock)
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
