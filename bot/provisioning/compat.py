"""Will this offer run this manifest? Pure rules for CUDA/driver, GPU architecture and disk.

* **CUDA vs driver**: a torch built for CUDA X.Y needs a host driver that supports X.Y. Vast reports
  that as ``cuda_max_good`` (the highest CUDA the driver runs); when it is missing the driver version
  is compared with the minimum of NVIDIA's CUDA toolkit release notes (``MIN_DRIVER``).
* **Architecture**: PyTorch's CUDA 12.8+ wheels ship kernels for sm_75 and newer only (Maxwell, Pascal
  and Volta were dropped), and wheels before CUDA 12.8 have none for Blackwell (sm_100/sm_120). With the
  image's automatic tag the image picks the host's CUDA, so the same rule applies with the host's CUDA.
* **Disk**: the models' bytes, plus the image, plus room for torch/nodes/wheels and the script's own
  free-space margin, against the disk the rental will get.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from bot.provisioning.manifest import TorchNeed
from bot.vast.models import Offer

# Minimum Linux driver per CUDA toolkit (NVIDIA's CUDA toolkit release notes, table 3).
MIN_DRIVER: dict[tuple[int, int], str] = {
    (11, 8): "520.61.05", (12, 0): "525.60.13", (12, 1): "530.30.02", (12, 2): "535.54.03",
    (12, 3): "545.23.06", (12, 4): "550.54.14", (12, 5): "555.42.02", (12, 6): "560.28.03",
    (12, 8): "570.26", (12, 9): "575.51.03", (13, 0): "580.65.06",
}
# The newest CUDA the vastai images are built for: the automatic tag never picks above it.
IMAGE_CUDA_MAX = (12, 9)
# PyTorch's wheel architecture lists: cu128+ start at sm_75; older builds stop at sm_90.
CU128_MIN_CC = 75
PRE_CU128_MAX_CC = 90

# Disk besides the models (GB): the vastai/comfyui image unpacked, room for torch/pip caches and node
# wheels, per custom node (clone + its wheels), and the script's free-space margin (PROV_DISK_MARGIN_MB).
IMAGE_GB = 16.0
BASE_MARGIN_GB = 4.0
PER_NODE_GB = 0.5
SCRIPT_MARGIN_GB = 1.0
GB = 1024**3


def _version(text: str | None) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text or "")[:3])


def _cc(offer: Offer) -> int | None:
    """Compute capability as 61/75/89/120 (Vast writes 610/750/890/1200 in ``compute_cap``)."""
    cap = offer.compute_cap
    if cap is None or cap <= 0:
        return None
    return cap // 10 if cap >= 100 else cap


def min_driver(cuda: tuple[int, int]) -> str | None:
    """The lowest driver for ``cuda`` (the next listed toolkit's when this exact one is not listed)."""
    known = sorted(MIN_DRIVER)
    for version in known:
        if version >= cuda:
            return MIN_DRIVER[version]
    return None


def _host_cuda(offer: Offer) -> tuple[int, int] | None:
    if offer.cuda_max_good is None or offer.cuda_max_good <= 0:
        return None
    major = int(offer.cuda_max_good)
    return major, round((offer.cuda_max_good - major) * 10)


def offer_problem(offer: Offer, need: TorchNeed | None) -> str | None:
    """Why ``offer`` cannot run the torch the manifest implies, as a reason shared by all such offers."""
    if need is not None and need.cpu:
        return None  # a CPU torch is a manifest problem, not an offer's
    cuda = need.cuda if need is not None else None
    host = _host_cuda(offer)
    if cuda is not None:
        driver = min_driver(cuda)
        label = f"CUDA {cuda[0]}.{cuda[1]} needs driver ≥ {driver}" if driver else f"CUDA {cuda[0]}.{cuda[1]}"
        if host is not None and host < cuda:
            return label
        if host is None and driver and offer.driver_version and _version(offer.driver_version) < _version(driver):
            return label
    # The CUDA the instance will really run: the pinned one, else what the image picks for this host.
    effective = cuda or (min(host, IMAGE_CUDA_MAX) if host is not None else None)
    cc = _cc(offer)
    if effective is None or cc is None:
        return None
    wheel = f"cu{effective[0]}{effective[1]}"
    if effective >= (12, 8) and cc < CU128_MIN_CC:
        return f"{wheel} torch has no kernels for sm_{cc}"
    if effective < (12, 8) and cc > PRE_CU128_MAX_CC:
        return f"sm_{cc} needs a CUDA ≥ 12.8 torch ({wheel} has no kernels for it)"
    return None


@dataclass
class HiddenOffers:
    """Offers left out of a list, counted by reason."""

    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def count(self) -> int:
        return sum(self.reasons.values())

    def summary(self) -> str:
        """E.g. ``3 offers hidden: CUDA 12.8 needs driver ≥ 570.26 (2); cu128 torch has no kernels for sm_61``."""
        if not self.reasons:
            return ""
        parts = [reason + (f" ({n})" if n > 1 and len(self.reasons) > 1 else "")
                 for reason, n in self.reasons.most_common()]
        noun = "offer" if self.count == 1 else "offers"
        return f"{self.count} {noun} hidden: " + "; ".join(parts)


def compatible_offers(offers: Sequence[Offer], need: TorchNeed | None) -> tuple[list[Offer], HiddenOffers]:
    """``offers`` without the ones that cannot run ``need``, in the same order, and why the rest went."""
    kept: list[Offer] = []
    hidden = HiddenOffers()
    for offer in offers:
        problem = offer_problem(offer, need)
        if problem is None:
            kept.append(offer)
        else:
            hidden.reasons[problem] += 1
    return kept, hidden


@dataclass(frozen=True)
class DiskPlan:
    """What the instance's disk must hold; ``need_gb`` is the disk to request."""

    models_bytes: int
    models_unknown: int  # models whose size neither the server nor the manifest gave
    nodes: int
    image_gb: float = IMAGE_GB

    @property
    def margin_gb(self) -> float:
        return BASE_MARGIN_GB + SCRIPT_MARGIN_GB + PER_NODE_GB * self.nodes

    @property
    def models_gb(self) -> float:
        return self.models_bytes / GB

    @property
    def need_gb(self) -> int:
        return math.ceil(self.models_gb + self.image_gb + self.margin_gb)

    def breakdown(self) -> str:
        unknown = f" (+{self.models_unknown} of unknown size)" if self.models_unknown else ""
        return (f"models {self.models_gb:.1f} GB{unknown} + image ~{self.image_gb:g} GB + "
                f"margin {self.margin_gb:g} GB = {self.need_gb} GB")
