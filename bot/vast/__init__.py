"""The Vast.ai API: async client, models of offers/instances/user, and typed errors."""

from bot.vast.client import DEFAULT_MIN_SPACING, NO_SPACING, VastClient
from bot.vast.countries import country_of, normalize_country
from bot.vast.errors import (
    VastAuthError,
    VastDestroyUnconfirmed,
    VastError,
    VastLogsNotReady,
    VastNotFound,
    VastRateLimited,
    VastRequestRejected,
    VastResponseError,
    VastServerError,
    VastTransportError,
    VastUnavailableOffer,
)
from bot.vast.models import Instance, Offer, OfferQuery, User

__all__ = [
    "DEFAULT_MIN_SPACING",
    "NO_SPACING",
    "Instance",
    "Offer",
    "OfferQuery",
    "User",
    "VastAuthError",
    "VastClient",
    "VastDestroyUnconfirmed",
    "VastError",
    "VastLogsNotReady",
    "VastNotFound",
    "VastRateLimited",
    "VastRequestRejected",
    "VastResponseError",
    "VastServerError",
    "VastTransportError",
    "VastUnavailableOffer",
    "country_of",
    "normalize_country",
]
