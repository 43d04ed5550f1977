"""Offer catalogues for the Vast simulator: realistic rows, with cheap hosts in excluded countries.

Every call returns fresh dicts (the simulator marks offers rented). ``dph_total`` and
``storage_total_cost`` here are for 5 GB of disk; the simulator recomputes both for the
``allocated_storage`` of each search, as Vast does.
"""

from __future__ import annotations

import copy
from typing import Any

# Per-model facts: VRAM (MB, as Vast reports it), compute capability x100, dlperf per GPU.
GPU_SPECS: dict[str, dict[str, float]] = {
    "RTX 4090": {"gpu_ram": 24564, "compute_cap": 890, "dlperf": 72.0},
    "RTX 3090": {"gpu_ram": 24576, "compute_cap": 860, "dlperf": 38.5},
    "RTX A5000": {"gpu_ram": 24564, "compute_cap": 860, "dlperf": 31.0},
    "A100 SXM4": {"gpu_ram": 81920, "compute_cap": 800, "dlperf": 105.0},
    "A100 PCIE": {"gpu_ram": 40960, "compute_cap": 800, "dlperf": 88.0},
}
DEFAULT_STORAGE_GB = 5.0
_START = 1_786_000_000.0


def storage_total_cost(storage_cost_per_gb_month: float, disk_gb: float) -> float:
    """$/h for ``disk_gb`` at ``storage_cost`` $/GB/month (Vast prorates a 30-day month)."""
    return storage_cost_per_gb_month * disk_gb / 720.0


def priced_offer(offer: dict[str, Any], allocated_gb: float) -> dict[str, Any]:
    """A copy of ``offer`` priced for ``allocated_gb`` of disk, as a search for that much shows it."""
    row = dict(offer)
    disk_hour = storage_total_cost(float(row.get("storage_cost") or 0.0), allocated_gb)
    base = float(row.get("dph_base") or 0.0)
    row["storage_total_cost"] = round(disk_hour, 7)
    row["dph_total"] = round(base + disk_hour, 7)
    row["search"] = {"gpuCostPerHour": base, "diskHour": round(disk_hour, 7), "totalHour": row["dph_total"]}
    return row


def make_offer(
    offer_id: int,
    gpu_name: str,
    dph_base: float,
    geolocation: str | None,
    *,
    num_gpus: int = 1,
    reliability: float = 0.995,
    verification: str = "verified",
    direct_port_count: int = 64,
    inet_down: float = 900.0,
    inet_up: float = 800.0,
    disk_space: float = 400.0,
    cuda_max_good: float = 12.8,
    storage_cost: float = 0.15,
    **overrides: Any,
) -> dict[str, Any]:
    """One offer row with every field a real ``/bundles/`` row carries (as Vast's search answers)."""
    spec = GPU_SPECS.get(gpu_name, {"gpu_ram": 24000, "compute_cap": 860, "dlperf": 30.0})
    seq = offer_id % 1000
    disk_hour = storage_total_cost(storage_cost, DEFAULT_STORAGE_GB)
    row: dict[str, Any] = {
        "id": offer_id,
        "ask_contract_id": offer_id,
        "bundle_id": 604_000_000 + seq,
        "machine_id": 30_000 + seq * 7,
        "host_id": 80_000 + seq * 3,
        "num_gpus": num_gpus,
        "gpu_name": gpu_name,
        "gpu_ram": spec["gpu_ram"],
        "gpu_total_ram": spec["gpu_ram"] * num_gpus,
        "gpu_arch": "nvidia",
        "cpu_cores_effective": 8.0 * num_gpus,
        "cpu_ram": 64_306 * num_gpus,
        "cpu_arch": "amd64",
        "disk_space": disk_space,
        "disk_bw": 2400.0,
        "inet_up": inet_up,
        "inet_down": inet_down,
        "inet_up_cost": 0.002,
        "inet_down_cost": 0.002,
        "direct_port_count": direct_port_count,
        "cuda_max_good": cuda_max_good,
        "driver_version": "570.133.07",
        "compute_cap": spec["compute_cap"],
        "dph_base": dph_base,
        "storage_cost": storage_cost,
        "storage_total_cost": round(disk_hour, 7),
        "dph_total": round(dph_base + disk_hour, 7),
        "min_bid": round(dph_base * 0.55, 4),
        "is_bid": False,
        "reliability": reliability,
        "reliability2": reliability,
        "verification": verification,
        "vericode": 1 if verification == "verified" else 0,
        "rentable": True,
        "rented": False,
        "geolocation": geolocation,
        "geolocode": 100 + seq,
        "public_ipaddr": f"203.0.113.{seq % 250 + 1}",
        "static_ip": seq % 2 == 0,
        "hosting_type": 0,
        "external": False,
        "start_date": _START,
        "end_date": _START + 90 * 86400,
        "duration": 90 * 86400.0,
        "score": round(spec["dlperf"] * num_gpus / max(dph_base, 0.01), 1),
        "dlperf": spec["dlperf"] * num_gpus,
        "search": {
            "gpuCostPerHour": dph_base,
            "diskHour": round(disk_hour, 7),
            "totalHour": round(dph_base + disk_hour, 7),
        },
    }
    row.update(overrides)
    return row


# (gpu, $/h GPU, geolocation, extra fields). Several of the cheapest are in China or Ukraine,
# some written as full country names or with no geolocation, which Vast's own filter lets through.
_DEFAULT_ROWS: list[tuple[str, float, str | None, dict[str, Any]]] = [
    ("RTX 3090", 0.15, "Sichuan, CN", {}),
    ("RTX 3090", 0.16, "Kharkiv, Ukraine", {}),
    ("RTX 4090", 0.17, "Kyiv, UA", {}),
    ("RTX 4090", 0.19, None, {}),
    ("RTX 4090", 0.21, "CN", {}),
    ("RTX 4090", 0.23, "Guangdong, China", {}),
    ("RTX A5000", 0.17, "Beijing, China", {}),
    ("RTX 3090", 0.19, "Hong Kong, HK", {}),
    ("RTX 4090", 0.26, "HK", {}),
    ("RTX 3090", 0.20, "Mazovia, PL", {}),
    ("RTX 3090", 0.21, "Washington, US", {}),
    ("RTX A5000", 0.22, "Skane, SE", {}),
    ("RTX 3090", 0.23, "Brandenburg, DE", {}),
    ("RTX 3090", 0.24, "Ile-de-France, FR", {}),
    ("RTX A5000", 0.25, "Hesse, DE", {}),
    ("RTX 3090", 0.26, "Quebec, CA", {}),
    ("RTX 4090", 0.28, "Utah, US", {"verification": "unverified", "reliability": 0.97}),
    ("RTX 4090", 0.29, "Florida, US", {"reliability": 0.90}),
    ("RTX 4090", 0.30, "Nevada, US", {"direct_port_count": 2, "inet_down": 80.0}),
    ("RTX 4090", 0.31, "California, United States", {}),
    ("RTX 4090", 0.35, "California, US", {}),
    ("RTX 4090", 0.36, "Stockholm, SE", {}),
    ("RTX 4090", 0.37, "Lesser Poland, PL", {}),
    ("RTX 4090", 0.38, "Bavaria, DE", {}),
    ("RTX 4090", 0.39, "Ontario, CA", {}),
    ("RTX 4090", 0.40, "North Holland, NL", {}),
    ("RTX 4090", 0.45, "Provence, FR", {}),
    ("RTX 4090", 0.48, "Tokyo, JP", {}),
    ("RTX 4090", 0.80, "Oregon, US", {"num_gpus": 2}),
    ("A100 PCIE", 0.95, "Amsterdam, NL", {}),
    ("A100 SXM4", 1.10, "Virginia, US", {}),
    ("A100 SXM4", 2.00, "Osaka, JP", {"num_gpus": 2}),
]

DEFAULT_FIRST_OFFER_ID = 21_876_500


def default_catalogue() -> list[dict[str, Any]]:
    """About 30 offers across US, DE, NL, FR, SE, CA, JP, PL, HK, CN, UA and one with no geolocation."""
    rows = []
    for i, (gpu, price, geo, extra) in enumerate(_DEFAULT_ROWS):
        extra = dict(extra)
        num_gpus = extra.pop("num_gpus", 1)
        rows.append(make_offer(DEFAULT_FIRST_OFFER_ID + i, gpu, price, geo, num_gpus=num_gpus, **extra))
    return rows


CHINA_CHEAPEST_OFFER_ID = 21_876_499


def china_cheapest_catalogue() -> list[dict[str, Any]]:
    """The default catalogue plus the cheapest RTX 4090 of all, flawless on paper, in "Guangdong, China".

    Vast's own ``geolocation notin ["CN"]`` lets it through (full country name); only the
    client's post-filter keeps the bot from renting it.
    """
    rows = default_catalogue()
    rows.append(
        make_offer(
            CHINA_CHEAPEST_OFFER_ID,
            "RTX 4090",
            0.15,
            "Shenzhen, Guangdong, China",
            reliability=0.999,
            direct_port_count=200,
            inet_down=2000.0,
            inet_up=2000.0,
            disk_space=1000.0,
        )
    )
    return copy.deepcopy(rows)
