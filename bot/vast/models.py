"""Pydantic models of Vast.ai offers, instances and the user, plus the offer search query.

Vast's JSON is untrusted: every field but ``id`` is optional, unknown fields are kept, and a
value of the wrong type becomes None instead of failing the whole row.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from bot.vast.countries import country_of, normalize_country

__all__ = ["Instance", "Offer", "OfferQuery", "User", "country_of", "normalize_country"]


def _lenient_float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _lenient_int(value: Any) -> int | None:
    number = _lenient_float(value)
    return int(number) if number is not None else None


def _lenient_str(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _lenient_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    return None


def _lenient_dict(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


Float = Annotated[float | None, BeforeValidator(_lenient_float)]
Int = Annotated[int | None, BeforeValidator(_lenient_int)]
Str = Annotated[str | None, BeforeValidator(_lenient_str)]
Bool = Annotated[bool | None, BeforeValidator(_lenient_bool)]
Dict = Annotated[dict[str, Any] | None, BeforeValidator(_lenient_dict)]


class _VastModel(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Offer(_VastModel):
    """One rentable offer from ``POST /api/v0/bundles/``; ``id`` is what ``PUT /asks/{id}/`` takes."""

    id: int
    ask_contract_id: Int = None
    bundle_id: Int = None
    machine_id: Int = None
    host_id: Int = None
    gpu_name: Str = None
    num_gpus: Int = None
    gpu_ram: Float = None  # MB per GPU
    gpu_total_ram: Float = None  # MB over all GPUs
    cpu_ram: Float = None
    cpu_cores_effective: Float = None
    dph_total: Float = None  # $/h incl. storage for the query's allocated_storage
    dph_base: Float = None
    storage_cost: Float = None
    storage_total_cost: Float = None
    min_bid: Float = None
    reliability: Float = None
    reliability2: Float = None
    verification: Str = None
    geolocation: Str = None
    inet_down: Float = None
    inet_up: Float = None
    inet_down_cost: Float = None
    inet_up_cost: Float = None
    disk_space: Float = None
    direct_port_count: Int = None
    cuda_max_good: Float = None
    driver_version: Str = None
    compute_cap: Int = None
    public_ipaddr: Str = None
    rentable: Bool = None
    rented: Bool = None
    end_date: Float = None
    score: Float = None

    @model_validator(mode="before")
    @classmethod
    def _reliability_fallback(cls, data: Any) -> Any:
        if isinstance(data, dict) and _lenient_float(data.get("reliability")) is None:
            if _lenient_float(data.get("reliability2")) is not None:
                data = {**data, "reliability": data["reliability2"]}
        return data

    @property
    def vram_gb(self) -> float | None:
        """Per-GPU VRAM in GB (Vast's MB / 1000, the same factor the query uses)."""
        return None if self.gpu_ram is None else self.gpu_ram / 1000.0

    @property
    def country(self) -> str | None:
        """ISO-2 country code from ``geolocation``, or None when absent or unparseable."""
        return country_of(self.geolocation)

    @property
    def verified(self) -> bool:
        return self.verification == "verified"


class Instance(_VastModel):
    """One rented instance, from ``GET /api/v1/instances/`` or ``GET /api/v0/instances/{id}/``."""

    id: int
    label: Str = None
    actual_status: Str = None  # None while the contract is being provisioned
    intended_status: Str = None
    cur_state: Str = None
    next_state: Str = None
    status_msg: Str = None
    machine_id: Int = None
    host_id: Int = None
    bundle_id: Int = None
    gpu_name: Str = None
    num_gpus: Int = None
    gpu_ram: Float = None
    geolocation: Str = None
    verification: Str = None
    reliability2: Float = None
    image_uuid: Str = None
    image_runtype: Str = None
    dph_total: Float = None
    dph_base: Float = None
    storage_cost: Float = None
    storage_total_cost: Float = None
    inet_up_cost: Float = None
    inet_down_cost: Float = None
    start_date: Float = None  # epoch seconds the instance was created
    end_date: Float = None  # contract expiry
    uptime_mins: Float = None
    disk_space: Float = None
    ssh_host: Str = None
    ssh_port: Int = None
    public_ipaddr: Str = None
    ports: Dict = None  # Docker style: {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": "41022"}]}
    direct_port_start: Int = None
    direct_port_end: Int = None

    @property
    def country(self) -> str | None:
        return country_of(self.geolocation)

    @property
    def is_running(self) -> bool:
        return self.actual_status == "running"

    def host_port(self, container_port: int | str, proto: str = "tcp") -> int | None:
        """The host port Vast mapped ``container_port`` to (direct mode), or None."""
        bindings = (self.ports or {}).get(f"{container_port}/{proto}")
        if not isinstance(bindings, list):
            return None
        for binding in bindings:
            if isinstance(binding, dict):
                port = _lenient_int(binding.get("HostPort"))
                if port and 0 < port < 65536:
                    return port
        return None

    def ssh_endpoint(self) -> tuple[str, int] | None:
        """Where to SSH: direct ``public_ipaddr`` + mapped port 22 if present, else the proxy; or None."""
        candidates = self.ssh_candidates()
        return candidates[0] if candidates else None

    def ssh_candidates(self) -> list[tuple[str, int]]:
        """SSH endpoints to try in order: direct, proxy ``ssh_port``, then proxy ``ssh_port + 1``.

        The ``+1`` is Vast's proxy off-by-one quirk for jupyter runtypes (vast-cli#79).
        """
        found: list[tuple[str, int]] = []
        direct = self.host_port(22)
        if self.public_ipaddr and direct:
            found.append((self.public_ipaddr, direct))
        if self.ssh_host and self.ssh_port and 0 < self.ssh_port < 65535:
            found.append((self.ssh_host, self.ssh_port))
            found.append((self.ssh_host, self.ssh_port + 1))
        return found


class User(_VastModel):
    """The account behind the API key (``GET /api/v0/users/current/``); Vast strips the key itself."""

    id: Int = None
    email: Str = None
    username: Str = None
    credit: Float = None
    balance: Float = None
    balance_threshold: Float = None
    can_pay: Bool = None
    has_billing: Bool = None

    @property
    def money_left(self) -> float | None:
        """Prepaid money left: ``credit`` (Vast's semantics of ``balance`` are not documented)."""
        return self.credit if self.credit is not None else self.balance


class OfferQuery(BaseModel):
    """What to search for. ``to_api_body()`` builds Vast's query; ``rejects()`` re-checks an offer locally."""

    model_config = ConfigDict(extra="forbid")

    gpu_names: list[str] | None = None  # e.g. ["RTX 4090", "RTX 3090"], with spaces as Vast spells them
    num_gpus: int | None = Field(default=1, ge=1)
    min_vram_gb: float | None = Field(default=None, ge=0)
    max_dph: float | None = Field(default=None, gt=0)
    min_reliability: float | None = Field(default=None, ge=0, le=1)
    verified: bool = True
    min_direct_ports: int | None = Field(default=None, ge=0)
    disk_gb: float = Field(default=50, ge=8)
    min_inet_down: float | None = Field(default=None, ge=0)  # Mbit/s
    min_cuda: float | None = Field(default=None, ge=0)
    excluded_countries: list[str] = Field(default_factory=lambda: ["CN", "UA"])
    excluded_machines: list[int] = Field(default_factory=list)
    offer_ids: list[int] | None = None  # only these offers (re-checking a quoted offer before renting)
    limit: int = Field(default=20, ge=1, le=1000)

    @field_validator("gpu_names")
    @classmethod
    def _gpu_names(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        names = [" ".join(name.replace("_", " ").split()) for name in value if name.strip()]
        return names or None

    @field_validator("excluded_countries")
    @classmethod
    def _countries(cls, value: list[str]) -> list[str]:
        codes: list[str] = []
        for item in value:
            if not item.strip():
                continue
            code = normalize_country(item)
            if code is None:
                raise ValueError(f"unknown country {item!r}: use a two-letter code such as CN")
            if code not in codes:
                codes.append(code)
        return codes

    def to_api_body(self, *, limit: int | None = None) -> dict[str, Any]:
        """The JSON body of ``POST /api/v0/bundles/`` (GB converted to Vast's MB for ``gpu_ram``)."""
        body: dict[str, Any] = {
            "rentable": {"eq": True},
            "rented": {"eq": False},
            "external": {"eq": False},
        }
        if self.verified:
            body["verified"] = {"eq": True}
        if self.gpu_names:
            body["gpu_name"] = {"in": list(self.gpu_names)}
        if self.num_gpus is not None:
            body["num_gpus"] = {"eq": self.num_gpus}
        if self.min_vram_gb is not None:
            body["gpu_ram"] = {"gte": round(self.min_vram_gb * 1000)}
        if self.min_reliability is not None:
            body["reliability"] = {"gte": self.min_reliability}
        if self.min_direct_ports is not None:
            body["direct_port_count"] = {"gte": self.min_direct_ports}
        if self.min_inet_down is not None:
            body["inet_down"] = {"gte": self.min_inet_down}
        body["disk_space"] = {"gte": self.disk_gb}
        if self.min_cuda is not None:
            body["cuda_max_good"] = {"gte": self.min_cuda}
        if self.max_dph is not None:
            body["dph_total"] = {"lte": self.max_dph}
        if self.excluded_countries:
            body["geolocation"] = {"notin": list(self.excluded_countries)}
        if self.excluded_machines:
            body["machine_id"] = {"notin": list(self.excluded_machines)}
        if self.offer_ids:
            body["id"] = {"in": list(self.offer_ids)}
        body["order"] = [["dph_total", "asc"]]
        body["type"] = "on-demand"
        body["allocated_storage"] = self.disk_gb
        body["limit"] = self.limit if limit is None else limit
        return body

    def rejects(self, offer: Offer) -> str | None:
        """Why ``offer`` must not be rented under this query (None if it passes).

        The server applies the same filters, but its country filter only understands codes and
        lets full names and null through, so this check is the one that is trusted.
        """
        country = offer.country
        if country is None:
            return f"geolocation {offer.geolocation!r} has no recognisable country"
        if country in self.excluded_countries:
            return f"country {country} is excluded"
        if self.offer_ids and offer.id not in self.offer_ids:
            return f"offer {offer.id} not asked for"
        if offer.machine_id is not None and offer.machine_id in self.excluded_machines:
            return f"machine {offer.machine_id} is excluded"
        if offer.dph_total is None:
            return "no price"
        if self.max_dph is not None and offer.dph_total > self.max_dph:
            return f"${offer.dph_total:.3f}/h is over ${self.max_dph:.3f}/h"
        if self.min_vram_gb is not None and (offer.vram_gb or 0) < self.min_vram_gb:
            return f"{offer.vram_gb} GB VRAM is under {self.min_vram_gb} GB"
        if self.gpu_names and offer.gpu_name not in self.gpu_names:
            return f"GPU {offer.gpu_name!r} not wanted"
        if self.num_gpus is not None and offer.num_gpus is not None and offer.num_gpus != self.num_gpus:
            return f"{offer.num_gpus} GPUs, wanted {self.num_gpus}"
        if self.min_reliability is not None and (offer.reliability or 0) < self.min_reliability:
            return f"reliability {offer.reliability} under {self.min_reliability}"
        # A missing field is left to the server's filter; a contradicting one is not.
        if self.verified and offer.verification is not None and not offer.verified:
            return f"verification {offer.verification!r}"
        if offer.rented:
            return "already rented"
        return None
