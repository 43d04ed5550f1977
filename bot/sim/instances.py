"""The simulated account's instances, without HTTP: their rows, lifecycle and bills.

An instance moves null → created → loading → running on the injected clock, computed when read
(no background tasks) unless a status was pinned. Billing is per second: storage from create,
the GPU while running; destroy stops both, and the row leaves the live list ``destroy_delay``
later, freeing its offer. ``VastSim`` serves this over Vast's routes; tests and the rehearsal
stage steer it directly (``seed_instance``, ``update_instance``, ``set_container_logs``).
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bot.clock import Clock
from bot.sim.catalog import default_catalogue, make_offer, storage_total_cost
from bot.sim.query import as_float

ContainerLogs = str | Callable[[], str | Awaitable[str]]

_FIRST_INSTANCE_ID = 30_117_700


@dataclass
class InstanceMeta:
    """What the simulator knows of an instance beyond its stored row."""

    created_at: float
    destroyed_at: float | None = None
    pins: list[tuple[float, str | None]] = field(default_factory=list)  # explicit status changes
    explicit: set[str] = field(default_factory=set)  # fields set by update_instance
    logs: ContainerLogs | None = None


class Fleet:
    """The offers on the market and the instances rented from them, on ``clock``."""

    def __init__(
        self,
        clock: Clock,
        *,
        catalogue: list[dict[str, Any]] | None = None,
        provisioning_delay: float = 2.0,
        created_to_loading: float = 5.0,
        loading_to_running: float = 60.0,
        destroy_delay: float = 0.0,
        start_date_offset: float = 0.0,
    ) -> None:
        self.clock = clock
        self.offers: list[dict[str, Any]] = catalogue if catalogue is not None else default_catalogue()
        self.provisioning_delay = provisioning_delay
        self.created_to_loading = created_to_loading
        self.loading_to_running = loading_to_running
        self.destroy_delay = destroy_delay
        # Vast's clock minus the bot's: Vast stamps ``start_date`` on its own clock (a negative
        # offset makes a new instance look older to a bot whose clock runs ahead of Vast's).
        self.start_date_offset = start_date_offset
        self.instances: dict[int, dict[str, Any]] = {}  # live instances, as stored (no computed fields)
        self.destroyed: dict[int, dict[str, Any]] = {}
        self._meta: dict[int, InstanceMeta] = {}
        self._next_id = _FIRST_INSTANCE_ID

    # ------------------------------------------------------------------ steering

    def update_instance(self, instance_id: int, **fields: Any) -> None:
        """Set fields of an instance (``ssh_host``, ``ssh_port``, ``public_ipaddr``, ``ports``, ...).

        ``actual_status=...`` pins the status from now on (billing follows it), overriding the
        clock-driven progression; explicit fields win over the computed ones.
        """
        row = self.instances.get(instance_id)
        if row is None:
            raise KeyError(f"no live instance {instance_id}")
        meta = self._meta[instance_id]
        now = self.clock.now()
        if "actual_status" in fields:
            meta.pins.append((now, fields.pop("actual_status")))
        for key, value in fields.items():
            row[key] = value
            meta.explicit.add(key)

    def set_container_logs(self, instance_id: int, logs: ContainerLogs) -> None:
        """What ``request_logs`` serves for the instance: text, or a callable returning (awaitable) text."""
        if instance_id not in self._meta:
            raise KeyError(f"no instance {instance_id}")
        self._meta[instance_id].logs = logs

    def seed_instance(self, *, label: str | None = None, age: float = 0.0, **fields: Any) -> int:
        """Create an instance directly (no HTTP, no offer consumed), ``age`` seconds old; returns its id."""
        offer = make_offer(29_000_000 + self._next_id % 100_000, "RTX 4090", 0.35, "Ontario, CA")
        offer["machine_id"] = 50_000 + self._next_id % 100_000
        instance_id = self.new_instance(
            offer, {"label": label, "image": "vastai/comfyui:@vastai-automatic-tag", "disk": 50},
            created_at=self.clock.now() - age,
        )
        row = self.instances[instance_id]
        for key, value in fields.items():
            if key == "actual_status":
                self._meta[instance_id].pins.append((self.clock.now(), value))
            else:
                row[key] = value
                self._meta[instance_id].explicit.add(key)
        return instance_id

    # ------------------------------------------------------------------ reading

    def status_of(self, instance_id: int, at: float | None = None) -> str | None:
        """``actual_status`` at clock time ``at`` (default now)."""
        meta = self._meta[instance_id]
        t = self.clock.now() if at is None else at
        pinned = [s for (tp, s) in meta.pins if tp <= t]
        if pinned:
            return pinned[-1]
        age = t - meta.created_at
        if age < self.provisioning_delay:
            return None
        if age < self.provisioning_delay + self.created_to_loading:
            return "created"
        if age < self.provisioning_delay + self.created_to_loading + self.loading_to_running:
            return "loading"
        return "running"

    def cost_of(self, instance_id: int, at: float | None = None) -> float:
        """Dollars billed so far: storage every second it exists, GPU (``dph_base``) every second running.

        While running that is ``dph_total`` per hour, prorated per second; destroy stops both.
        """
        meta = self._meta[instance_id]
        row = self.instances.get(instance_id) or self.destroyed[instance_id]
        end = self.clock.now() if at is None else at
        if meta.destroyed_at is not None:
            end = min(end, meta.destroyed_at)
        if end <= meta.created_at:
            return 0.0
        storage = float(row.get("storage_total_cost") or 0.0) * (end - meta.created_at) / 3600.0
        return storage + float(row.get("dph_base") or 0.0) * self.running_seconds(instance_id, end) / 3600.0

    def running_seconds(self, instance_id: int, until: float | None = None) -> float:
        """Seconds the instance has spent ``running`` (GPU-billed) up to ``until``."""
        meta = self._meta[instance_id]
        end = self.clock.now() if until is None else until
        if meta.destroyed_at is not None:
            end = min(end, meta.destroyed_at)
        start = meta.created_at
        loading_at = start + self.provisioning_delay + self.created_to_loading
        changes = [start + self.provisioning_delay, loading_at, loading_at + self.loading_to_running]
        changes += [tp for tp, _ in meta.pins]
        points = sorted({start, end, *(p for p in changes if start < p < end)})
        total = 0.0
        for a, b in itertools.pairwise(points):
            if self.status_of(instance_id, a) == "running":
                total += b - a
        return total

    def total_spent(self) -> float:
        return sum(self.cost_of(i) for i in self._meta)

    def row(self, instance_id: int) -> dict[str, Any] | None:
        """The instance as the API shows it now (computed fields included), or None when gone."""
        self.reap()
        if instance_id not in self.instances:
            return None
        return self.view(instance_id)

    def offer(self, offer_id: int) -> dict[str, Any] | None:
        return next((o for o in self.offers if o.get("id") == offer_id), None)

    async def container_logs(self, instance_id: int) -> str:
        """The instance's container log as the host would upload it now."""
        meta = self._meta.get(instance_id)
        source = meta.logs if meta is not None else None
        if source is None:
            return self._default_logs(instance_id)
        if callable(source):
            produced = source()
            if inspect.isawaitable(produced):
                produced = await produced
            return str(produced)
        return source

    # ------------------------------------------------------------------ lifecycle

    def new_instance(self, offer: dict[str, Any], body: dict[str, Any], *, created_at: float) -> int:
        """Rent ``offer`` with a create body's settings; returns the new instance's id."""
        instance_id = self._next_id
        self._next_id += 1
        disk = as_float(body.get("disk")) or 10.0
        disk_hour = storage_total_cost(float(offer.get("storage_cost") or 0.15), disk)
        dph_base = float(offer.get("dph_base") or 0.0)
        env = body.get("env") or {}
        ssh_idx = instance_id % 9 + 1
        row: dict[str, Any] = {
            "id": instance_id,
            "machine_id": offer.get("machine_id"),
            "host_id": offer.get("host_id"),
            "bundle_id": offer.get("bundle_id"),
            "ask_id": offer.get("id"),
            "label": body.get("label"),
            "image_uuid": body.get("image"),
            "image_runtype": body.get("runtype") or "ssh",
            "image_args": body.get("args") or [],
            "extra_env": [[str(k), str(v)] for k, v in env.items()],
            "onstart": body.get("onstart"),
            "jupyter_token": hashlib.sha256(f"jupyter-{instance_id}".encode()).hexdigest()[:10],
            "ssh_host": f"ssh{ssh_idx}.sim.invalid",
            "ssh_port": 20_000 + instance_id % 10_000,
            "ssh_idx": str(ssh_idx),
            "public_ipaddr": offer.get("public_ipaddr"),
            "local_ipaddrs": "10.0.3.12 172.17.0.1 \n",
            "gpu_name": offer.get("gpu_name"),
            "num_gpus": offer.get("num_gpus"),
            "gpu_ram": offer.get("gpu_ram"),
            "gpu_totalram": offer.get("gpu_total_ram"),
            "cpu_cores_effective": offer.get("cpu_cores_effective"),
            "cpu_ram": offer.get("cpu_ram"),
            "disk_space": disk,
            "inet_up": offer.get("inet_up"),
            "inet_down": offer.get("inet_down"),
            "dph_base": dph_base,
            "storage_cost": offer.get("storage_cost"),
            "storage_total_cost": round(disk_hour, 7),
            "dph_total": round(dph_base + disk_hour, 7),
            "inet_up_cost": offer.get("inet_up_cost"),
            "inet_down_cost": offer.get("inet_down_cost"),
            "is_bid": body.get("price") is not None,
            "min_bid": offer.get("min_bid"),
            "search": {
                "gpuCostPerHour": dph_base,
                "diskHour": round(disk_hour, 7),
                "totalHour": round(dph_base + disk_hour, 7),
            },
            "start_date": created_at + self.start_date_offset,
            "end_date": offer.get("end_date"),
            "geolocation": offer.get("geolocation"),
            "verification": offer.get("verification"),
            "reliability2": offer.get("reliability2", offer.get("reliability")),
            "cuda_max_good": offer.get("cuda_max_good"),
            "template_id": None,
            "template_hash_id": body.get("template_hash_id"),
            "volume_info": [],
        }
        self.instances[instance_id] = row
        self._meta[instance_id] = InstanceMeta(created_at=created_at)
        return instance_id

    def destroy(self, instance_id: int) -> None:
        """Stop billing a live instance now; it leaves the list after ``destroy_delay``."""
        meta = self._meta[instance_id]
        if meta.destroyed_at is None:
            meta.destroyed_at = self.clock.now()
        self.reap()

    def reap(self) -> None:
        """Move instances whose destroy has completed out of the live list, freeing their offers."""
        now = self.clock.now()
        for instance_id in list(self.instances):
            destroyed_at = self._meta[instance_id].destroyed_at
            if destroyed_at is not None and now >= destroyed_at + self.destroy_delay:
                row = self.instances.pop(instance_id)
                self.destroyed[instance_id] = row
                offer = self.offer(row.get("ask_id"))  # type: ignore[arg-type]
                if offer is not None:
                    offer["rented"] = False  # the machine is offered again

    def view(self, instance_id: int) -> dict[str, Any]:
        """A live instance's row with the fields Vast computes when it answers."""
        row = dict(self.instances[instance_id])
        meta = self._meta[instance_id]
        now = self.clock.now()
        status = self.status_of(instance_id)
        running = status == "running"
        image = row.get("image_uuid") or "image"
        messages = {
            None: None,
            "created": "Creating container",
            "loading": f"Pulling image {image}",
            "running": f"success, running {image}",
        }
        computed: dict[str, Any] = {
            "actual_status": status,
            "intended_status": "stopped" if meta.destroyed_at is not None else "running",
            "cur_state": "running",
            "next_state": "running",
            "status_msg": messages.get(status, status),
            "uptime_mins": round(self.running_seconds(instance_id) / 60.0, 2) if running else None,
            "duration": (row["end_date"] - now) if isinstance(row.get("end_date"), int | float) else None,
            "gpu_util": 0.0 if running else None,
            "instance": {
                "gpuCostPerHour": row["dph_base"] if running else 0,
                "diskHour": row["storage_total_cost"],
                "totalHour": (row["dph_total"] if running else row["storage_total_cost"]),
            },
            "ports": _auto_ports(row) if running else None,
            "direct_port_start": -1,
            "direct_port_end": -1,
        }
        if running:
            first = 40_000 + (instance_id % 500) * 20
            computed["direct_port_start"] = first
            computed["direct_port_end"] = first + 19
        for key, value in computed.items():
            if key not in meta.explicit:
                row[key] = value
        row["actual_status"] = status  # always the pinned or clock-driven value
        return row

    def _default_logs(self, instance_id: int) -> str:
        row = self.instances.get(instance_id) or self.destroyed.get(instance_id) or {}
        status = self.status_of(instance_id)
        lines = [f"vast sim: provisioning contract {instance_id} on machine {row.get('machine_id')}"]
        if status in ("loading", "running"):
            lines.append(f"Pulling image {row.get('image_uuid')}")
        if status == "running":
            lines += ["Status: Downloaded newer image", "Starting container", f"onstart: {row.get('onstart')}"]
        return "\n".join(lines) + "\n"


def _auto_ports(row: dict[str, Any]) -> dict[str, list[dict[str, str]]]:
    # Vast maps 22 and every "-p" in the env to consecutive host ports of the machine's range.
    first = 40_000 + (int(row["id"]) % 500) * 20
    container_ports = [22]
    for name, _ in row.get("extra_env") or []:
        if name.startswith("-p "):
            inner = name[3:].split(":")[-1].split("/")[0]
            if inner.isdigit() and int(inner) not in container_ports:
                container_ports.append(int(inner))
    return {f"{p}/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(first + i)}]
            for i, p in enumerate(container_ports[:20])}
